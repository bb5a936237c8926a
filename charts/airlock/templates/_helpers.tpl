{{- define "airlock.labels" -}}
app.kubernetes.io/part-of: airlock
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end }}
{{- define "airlock.operatorSelector" -}}
app.kubernetes.io/name: airlock-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "airlock.routerSelector" -}}
app.kubernetes.io/name: airlock-router
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
