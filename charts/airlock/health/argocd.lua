-- Argo CD health check for Airlock's kinds (Plugin, PluginTrustPolicy, PluginStorage), reading the
-- same conditions kstatus reads (Ready, Reconciling, Stalled). Argo CD runs it as Lua 5.1 with the
-- live object in `obj`; install it with the resource.customizations snippet in the README.
local hs = {}

local function condition(type)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

local function said(c)
  if c.reason ~= nil and c.message ~= nil then
    return c.reason .. ": " .. c.message
  end
  return c.reason or c.message or ""
end

local stalled = condition("Stalled")
local reconciling = condition("Reconciling")

if obj.kind ~= "Plugin" then
  -- Policies and storage are desired state the operator reads; nothing to wait for unless it
  -- says otherwise.
  if stalled ~= nil and stalled.status == "True" then
    hs.status = "Degraded"
    hs.message = said(stalled)
  elseif reconciling ~= nil and reconciling.status == "True" then
    hs.status = "Progressing"
    hs.message = said(reconciling)
  else
    hs.status = "Healthy"
  end
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "waiting for the Airlock operator to see the Plugin"
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "the Airlock operator has not seen the latest spec yet"
  return hs
end
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled)
  return hs
end
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = said(reconciling)
  return hs
end
local ready = condition("Ready")
if obj.status.phase == "Disabled" then
  hs.status = "Suspended"
  hs.message = ready ~= nil and said(ready) or "spec.enabled is false"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = said(ready)
  return hs
end
hs.status = "Progressing"
hs.message = ready ~= nil and said(ready) or "waiting for the Airlock operator"
return hs
