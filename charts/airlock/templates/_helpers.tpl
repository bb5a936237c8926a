{{- /*
Names. As cert-manager: the fullname is the release name when it contains the chart name
("airlock" gives "airlock", "airlock2" gives "airlock2"), otherwise "<release>-<chart>"; every object
is "<fullname>-<component>". So release `airlock` keeps the names the binaries default to
(airlock-operator, airlock-router), and a second release gets its own. The fullname is cut at 40
characters so that the longest Service name (<fullname>-operator-metrics) stays a 63-character DNS
label.
*/}}
{{- define "airlock.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "airlock.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "airlock.operator.fullname" -}}
{{- include "airlock.fullname" . }}-operator
{{- end }}

{{- define "airlock.router.fullname" -}}
{{- include "airlock.fullname" . }}-router
{{- end }}

{{- /*
The value of app.kubernetes.io/name of each component. Not release-specific (the instance label
is): the operator selects router pods by it (--router-label), and plugin NetworkPolicies admit them
by it.
*/}}
{{- define "airlock.operator.name" -}}
{{- include "airlock.name" . }}-operator
{{- end }}

{{- define "airlock.router.name" -}}
{{- include "airlock.name" . }}-router
{{- end }}

{{- /* ServiceAccount names: <fullname>-<component> when the chart creates them, or the given one. */}}
{{- define "airlock.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "airlock.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "airlock.router.serviceAccountName" -}}
{{- if .Values.router.serviceAccount.create }}
{{- default (include "airlock.router.fullname" .) .Values.router.serviceAccount.name }}
{{- else }}
{{- required "router.serviceAccount.name is required when router.serviceAccount.create is false" .Values.router.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "airlock.labels" -}}
app.kubernetes.io/part-of: airlock
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- with include "airlock.podLabels" .Values.commonLabels }}
{{ . }}
{{- end }}
{{- end }}

{{- /* User labels (commonLabels, podLabels) without the keys the chart sets itself. */}}
{{- define "airlock.podLabels" -}}
{{- with omit (. | default dict) "app.kubernetes.io/name" "app.kubernetes.io/instance" "app.kubernetes.io/component" "app.kubernetes.io/part-of" "app.kubernetes.io/managed-by" "app.kubernetes.io/version" "helm.sh/chart" }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "airlock.operatorSelector" -}}
app.kubernetes.io/name: {{ include "airlock.operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "airlock.routerSelector" -}}
app.kubernetes.io/name: {{ include "airlock.router.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- /*
An image reference from {repository, tag, digest}: repository[:tag][@digest]. Without a digest
the tag defaults to the chart's appVersion; with a digest the tag is written only when set (the
digest alone decides what runs). Call with (dict "image" .Values.x.image "context" $).
*/}}
{{- define "airlock.image" -}}
{{- $image := .image }}
{{- $registry := "" }}
{{- with .context.Values.global }}{{- $registry = .imageRegistry | default "" }}{{- end }}
{{- $repository := $image.repository }}
{{- if $registry }}{{- $repository = printf "%s/%s" (trimSuffix "/" $registry) $repository }}{{- end }}
{{- $tag := $image.tag | default "" | toString }}
{{- if and (not $tag) (not $image.digest) }}{{- $tag = .context.Chart.AppVersion }}{{- end }}
{{- $repository }}{{ if $tag }}:{{ $tag }}{{ end }}{{ if $image.digest }}@{{ $image.digest }}{{ end }}
{{- end }}

{{- /* imagePullSecrets: global.imagePullSecrets then imagePullSecrets, as a pod spec field. */}}
{{- define "airlock.imagePullSecrets" -}}
{{- $secrets := concat ((.Values.global).imagePullSecrets | default list) (.Values.imagePullSecrets | default list) }}
{{- with $secrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- /*
The scheduling and pod-level knobs shared by the operator and router pod specs. Call with
(dict "pod" .Values.operator "context" $); renders the fields at the pod spec's indentation 0.
*/}}
{{- define "airlock.podScheduling" -}}
{{- $ctx := .context }}
{{- $pod := .pod }}
{{- include "airlock.imagePullSecrets" $ctx }}
{{- with $pod.priorityClassName | default ($ctx.Values.global).priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with $pod.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $pod.topologySpreadConstraints }}
topologySpreadConstraints: {{- tpl (toYaml .) $ctx | nindent 2 }}
{{- end }}
{{- end }}

{{/* The telemetry environment of the operator and the router (values: audit, tracing). */}}
{{- define "airlock.tracingEnv" -}}
{{- with .Values.audit.sinkUrl }}
- name: AIRLOCK_AUDIT_SINK_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.tracing }}
{{- if .otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .otlpEndpoint | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler | quote }}
{{- with .samplerArg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
{{- end }}
