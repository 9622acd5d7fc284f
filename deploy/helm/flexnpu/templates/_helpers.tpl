{{/* Names, labels and small shared snippets of the flexnpu chart. */}}

{{- define "flexnpu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every object name; component names are appended, so leave room for them. */}}
{{- define "flexnpu.fullname" -}}
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

{{- define "flexnpu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; call with (dict "root" $ "component" "extender"). */}}
{{- define "flexnpu.labels" -}}
helm.sh/chart: {{ include "flexnpu.chart" .root }}
{{ include "flexnpu.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: flexnpu
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels; immutable once a workload exists, so they never include versions. */}}
{{- define "flexnpu.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flexnpu.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Object name of a component: (dict "root" $ "component" "extender"). */}}
{{- define "flexnpu.componentName" -}}
{{- printf "%s-%s" (include "flexnpu.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flexnpu.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The daemon token Secret's name, whether the chart creates it or the user brings it. */}}
{{- define "flexnpu.tokenSecretName" -}}
{{- if .Values.daemonToken.existingSecret }}
{{- .Values.daemonToken.existingSecret }}
{{- else }}
{{- include "flexnpu.componentName" (dict "root" . "component" "daemon-token") }}
{{- end }}
{{- end }}

{{/* The extender's in-cluster URL, which the scheduler configuration points at. */}}
{{- define "flexnpu.extenderURL" -}}
{{- if .Values.scheduler.extender.urlPrefix }}
{{- .Values.scheduler.extender.urlPrefix }}
{{- else }}
{{- printf "http://%s.%s.svc:%d" (include "flexnpu.componentName" (dict "root" . "component" "extender")) .Release.Namespace (int .Values.extender.port) }}
{{- end }}
{{- end }}

{{/* The scheduler profile name: ours in mode second, the cluster's own in mode default. */}}
{{- define "flexnpu.schedulerProfileName" -}}
{{- if eq .Values.scheduler.mode "second" }}
{{- .Values.scheduler.schedulerName }}
{{- else }}
{{- "default-scheduler" }}
{{- end }}
{{- end }}

{{/* Security context of the cluster-level components (extender, operator): non-root, read-only root. */}}
{{- define "flexnpu.restrictedContainerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{- define "flexnpu.restrictedPodSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
# Mounted Secrets (daemon token, webhook certificate) are mode 0440: group 10001 must own them to read them.
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Read-only host mounts npu-smi needs inside a container (driver, DCMI, the binary itself). */}}
{{- define "flexnpu.ascendMounts" -}}
{{- if .Values.ascend.hostDriver }}
- name: ascend-driver
  mountPath: {{ .Values.ascend.driverDir }}
  readOnly: true
- name: ascend-dcmi
  mountPath: {{ .Values.ascend.dcmiDir }}
  readOnly: true
- name: npu-smi
  mountPath: {{ .Values.ascend.npuSmiPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* npu-smi finds its shared libraries in the mounted driver. */}}
{{- define "flexnpu.driverEnv" -}}
{{- if .Values.ascend.hostDriver }}
{{- $dir := .Values.ascend.driverDir }}
- name: LD_LIBRARY_PATH
  value: {{ printf "%s/lib64:%s/lib64/common:%s/lib64/driver" $dir $dir $dir | quote }}
{{- end }}
{{- end }}

{{/* The admission webhook runs in the extender's pods: mode deviceplugin with webhook.enabled. */}}
{{- define "flexnpu.webhookEnabled" -}}
{{- if and (ne .Values.mode "dra") .Values.webhook.enabled }}true{{ end }}
{{- end }}

{{/* The webhook's Service (all extender replicas, ready or not) and the Secret holding its serving certificate. */}}
{{- define "flexnpu.webhookServiceName" -}}
{{- include "flexnpu.componentName" (dict "root" . "component" "webhook") }}
{{- end }}

{{- define "flexnpu.webhookSecretName" -}}
{{- include "flexnpu.componentName" (dict "root" . "component" "webhook-tls") }}
{{- end }}

{{/* The cert-manager Certificate of the serving certificate (the cainjector copies its CA into caBundle). */}}
{{- define "flexnpu.webhookCertificateName" -}}
{{- include "flexnpu.componentName" (dict "root" . "component" "webhook") }}
{{- end }}

{{/* The kube-scheduler image: the tag given, else the cluster's own version (major.minor.patch, without a
     distribution suffix such as -eks-... or +k3s1, which registry.k8s.io does not publish). */}}
{{- define "flexnpu.schedulerImage" -}}
{{- $tag := .Values.scheduler.image.tag }}
{{- if not $tag }}
{{- $v := semver .Capabilities.KubeVersion.Version }}
{{- $tag = printf "v%d.%d.%d" $v.Major $v.Minor $v.Patch }}
{{- end }}
{{- printf "%s:%s" .Values.scheduler.image.repository $tag }}
{{- end }}

{{/* The address flexnpud binds. Mode dra: 127.0.0.1 whatever node.daemon.host says, since only the DRA plugin
     in the same pod calls it (no operator dials in), so nothing off the node can reach its API. */}}
{{- define "flexnpu.daemonHost" -}}
{{- if eq .Values.mode "dra" }}127.0.0.1{{ else }}{{ .Values.node.daemon.host }}{{ end }}
{{- end }}

{{/* flexnpud's liveness and readiness check: an HTTP GET of /service/health where kubelet can reach it (the pod
     IP, or with hostNetwork the bound host address), else, for a loopback-only daemon in its own network
     namespace, the same GET from inside the container. */}}
{{- define "flexnpu.daemonProbe" -}}
{{- $host := include "flexnpu.daemonHost" . }}
{{- if or .Values.node.hostNetwork (ne $host "127.0.0.1") }}
httpGet:
  path: /service/health
  port: daemon
  {{- if and .Values.node.hostNetwork (ne $host "0.0.0.0") }}
  host: {{ $host }}
  {{- end }}
{{- else }}
exec:
  command: ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{{ int .Values.node.daemon.port }}/service/health', timeout=3)"]
{{- end }}
{{- end }}
