{{/*
Shared helpers of the Aerie chart. Helpers that need a role take a dict:
  root: the top-level context ($)
  component: router | draft-worker | target-worker | etcd
  block: the role's values block (.Values.router, .Values.draftWorker, ...)
*/}}

{{/* The chart name (nameOverride wins). */}}
{{- define "aerie.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name. It stays under 40 characters so that
"<prefix>-target-worker" and "<prefix>-etcd-headless" still fit 63.
*/}}
{{- define "aerie.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's resources: <fullname>-<component>. */}}
{{- define "aerie.componentName" -}}
{{- printf "%s-%s" (include "aerie.fullname" .root) .component -}}
{{- end -}}

{{/* "name-version" for the helm.sh/chart label. */}}
{{- define "aerie.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that pick one component's pods; never change them after install. */}}
{{- define "aerie.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aerie.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The recommended labels of every object of one component. */}}
{{- define "aerie.labels" -}}
helm.sh/chart: {{ include "aerie.chart" .root }}
{{ include "aerie.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: aerie
{{- end -}}

{{/* The cluster name: workers register under /aerie/v1/<cluster>/. */}}
{{- define "aerie.cluster" -}}
{{- default .Release.Name .Values.cluster -}}
{{- end -}}

{{/* The client Service of the bundled etcd. */}}
{{- define "aerie.etcd.serviceName" -}}
{{- include "aerie.componentName" (dict "root" . "component" "etcd") -}}
{{- end -}}

{{/*
The value of --etcd-endpoints: the bundled etcd's Service, or the external
endpoints joined with commas. Exactly one of the two must be configured.
*/}}
{{- define "aerie.etcdEndpoints" -}}
{{- $bundled := .Values.etcd.bundled.enabled -}}
{{- $external := .Values.etcd.external.endpoints | default list -}}
{{- if and $bundled $external -}}
{{- fail "etcd: both etcd.bundled.enabled and etcd.external.endpoints are set; set etcd.bundled.enabled=false to use an external etcd" -}}
{{- else if $bundled -}}
{{- printf "http://%s.%s.svc:%d" (include "aerie.etcd.serviceName" .) .Release.Namespace (int .Values.etcd.bundled.clientPort) -}}
{{- else if $external -}}
{{- join "," $external -}}
{{- else -}}
{{- fail "etcd: no etcd configured; enable etcd.bundled.enabled or list etcd.external.endpoints" -}}
{{- end -}}
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "aerie.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "aerie.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* "true" when this worker block runs on a GPU, else empty. The router never does. */}}
{{- define "aerie.usesGpu" -}}
{{- if and .root.Values.gpu.enabled (ne .component "router") .block.useGpu -}}true{{- end -}}
{{- end -}}

{{/* The container image of a role: block override, else the shared repository with the CPU or CUDA tag. */}}
{{- define "aerie.image" -}}
{{- $img := .root.Values.image -}}
{{- $repo := .block.image.repository | default $img.repository -}}
{{- $tag := .block.image.tag | default (ternary $img.cudaTag $img.cpuTag (eq (include "aerie.usesGpu" .) "true")) -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "aerie.imagePullPolicy" -}}
{{- .block.image.pullPolicy | default .root.Values.image.pullPolicy -}}
{{- end -}}

{{/*
The container resources. A GPU worker gets a limit of `gpus` on the GPU
resource unless the block's own limits already name that resource; with
`gpuClaim` set (the colocated layout) it names that pod-level resource
claim instead, which both containers of the pod share.
*/}}
{{- define "aerie.resources" -}}
{{- $res := deepCopy (.block.resources | default dict) -}}
{{- if .gpuClaim -}}
{{- $_ := set $res "claims" (list (dict "name" .gpuClaim)) -}}
{{- else if eq (include "aerie.usesGpu" .) "true" -}}
{{- $gpuName := .root.Values.gpu.resourceName -}}
{{- $limits := deepCopy (get $res "limits" | default dict) -}}
{{- if not (hasKey $limits $gpuName) -}}
{{- $_ := set $limits $gpuName (int .gpus) -}}
{{- end -}}
{{- $_ := set $res "limits" $limits -}}
{{- end -}}
{{- if $res -}}
{{- toYaml $res -}}
{{- end -}}
{{- end -}}

{{/* One probe: an HTTP GET of `path` on the named port, with the block's timings. */}}
{{- define "aerie.probe" -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
initialDelaySeconds: {{ .probe.initialDelaySeconds | int }}
periodSeconds: {{ .probe.periodSeconds | int }}
timeoutSeconds: {{ .probe.timeoutSeconds | int }}
failureThreshold: {{ .probe.failureThreshold | int }}
successThreshold: {{ .probe.successThreshold | int }}
{{- end -}}

{{/*
The probes of a role's container: startup and liveness on /live, readiness
on /health, all on the port named `port` (router: http, workers: metrics).
*/}}
{{- define "aerie.probes" -}}
{{- $p := .block.probes -}}
{{- if $p.startup.enabled }}
startupProbe:
  {{- include "aerie.probe" (dict "path" "/live" "port" .port "probe" $p.startup) | nindent 2 }}
{{- end }}
{{- if $p.liveness.enabled }}
livenessProbe:
  {{- include "aerie.probe" (dict "path" "/live" "port" .port "probe" $p.liveness) | nindent 2 }}
{{- end }}
{{- if $p.readiness.enabled }}
readinessProbe:
  {{- include "aerie.probe" (dict "path" "/health" "port" .port "probe" $p.readiness) | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The --model-path of a role: the block's modelPath, else model.name. */}}
{{- define "aerie.modelPath" -}}
{{- .block.modelPath | default .root.Values.model.name -}}
{{- end -}}

{{/* Environment shared by every role: model directory, log filter, threads, then the block's env. */}}
{{- define "aerie.env" -}}
- name: AERIE_MODEL_DIR
  value: {{ .root.Values.model.dir | quote }}
- name: AERIE_LOG
  value: {{ .block.logLevel | default .root.Values.logLevel | quote }}
{{- if gt (int .block.threads) 0 }}
- name: AERIE_THREADS
  value: {{ .block.threads | int | quote }}
{{- end }}
{{- with .block.env }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The downward-API variables a worker needs for --advertise-addr. */}}
{{- define "aerie.podEnv" -}}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* The model volume (named "model"), from model.volume.type. */}}
{{- define "aerie.modelVolume" -}}
{{- $v := .Values.model.volume -}}
- name: model
{{- if eq $v.type "emptyDir" }}
  emptyDir:
    {{- if $v.emptyDir.sizeLimit }}
    sizeLimit: {{ $v.emptyDir.sizeLimit }}
    {{- else }} {}
    {{- end }}
{{- else if eq $v.type "hostPath" }}
  hostPath:
    path: {{ required "model.volume.hostPath.path is required for model.volume.type=hostPath" $v.hostPath.path | quote }}
    {{- with $v.hostPath.type }}
    type: {{ . }}
    {{- end }}
{{- else if eq $v.type "persistentVolumeClaim" }}
  persistentVolumeClaim:
    claimName: {{ required "model.volume.persistentVolumeClaim.claimName is required for model.volume.type=persistentVolumeClaim" $v.persistentVolumeClaim.claimName | quote }}
    readOnly: {{ $v.persistentVolumeClaim.readOnly }}
{{- else }}
{{- fail (printf "model.volume.type %q is not one of emptyDir, hostPath, persistentVolumeClaim" $v.type) }}
{{- end }}
{{- end -}}

{{/* The model volume mount of a role's container. */}}
{{- define "aerie.modelVolumeMount" -}}
- name: model
  mountPath: {{ .Values.model.dir }}
  {{- if and (eq .Values.model.volume.type "persistentVolumeClaim") .Values.model.volume.persistentVolumeClaim.readOnly }}
  readOnly: true
  {{- end }}
{{- end -}}

{{/*
Pod-level settings shared by the three roles: account, security, image pull
secrets, scheduling (a GPU worker also gets gpu.nodeSelector and
gpu.tolerations) and the termination grace period (`grace`).
*/}}
{{- define "aerie.podSpecCommon" -}}
{{- $root := .root -}}
{{- $gpu := eq (include "aerie.usesGpu" .) "true" -}}
serviceAccountName: {{ include "aerie.serviceAccountName" $root }}
automountServiceAccountToken: {{ $root.Values.serviceAccount.automountToken }}
{{- with $root.Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .block.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ .grace | int }}
{{- $nodeSelector := .block.nodeSelector | default dict }}
{{- if $gpu }}
{{- $nodeSelector = merge (deepCopy $nodeSelector) ($root.Values.gpu.nodeSelector | default dict) }}
{{- end }}
{{- with $nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- $tolerations := .block.tolerations | default list }}
{{- if $gpu }}
{{- $tolerations = concat ($root.Values.gpu.tolerations | default list) $tolerations }}
{{- end }}
{{- with $tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .block.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .block.topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The pod template's metadata of a role. */}}
{{- define "aerie.podMetadata" -}}
labels:
  {{- include "aerie.labels" . | nindent 2 }}
  {{- with .block.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A PodDisruptionBudget for one role, when its pdb.enabled; minAvailable, when set, wins over maxUnavailable. */}}
{{- define "aerie.pdb" -}}
{{- $pdb := .block.pdb -}}
{{- if $pdb.enabled }}
{{- $min := toString $pdb.minAvailable -}}
{{- $max := toString $pdb.maxUnavailable -}}
{{- if not (or $min $max) }}
{{- fail (printf "%s.pdb: set minAvailable or maxUnavailable" .key) }}
{{- end }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "aerie.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "aerie.labels" . | nindent 4 }}
spec:
  {{- if $min }}
  minAvailable: {{ include "aerie.intOrString" $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ include "aerie.intOrString" $pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "aerie.selectorLabels" . | nindent 6 }}
{{- end }}
{{- end -}}

{{/* An int-or-string value: numbers print as integers, percentages quoted. */}}
{{- define "aerie.intOrString" -}}
{{- if kindIs "string" . -}}
{{- if regexMatch "^[0-9]+$" . -}}{{ . }}{{- else -}}{{ . | quote }}{{- end -}}
{{- else -}}
{{- . | int -}}
{{- end -}}
{{- end -}}

{{/* A HorizontalPodAutoscaler (autoscaling/v2) for one role's Deployment, when its autoscaling.enabled. */}}
{{- define "aerie.hpa" -}}
{{- $as := .block.autoscaling -}}
{{- if $as.enabled }}
{{- if lt (int $as.maxReplicas) (int $as.minReplicas) }}
{{- fail (printf "%s.autoscaling: maxReplicas is below minReplicas" .key) }}
{{- end }}
{{- $m := $as.metric -}}
{{- $source := ternary "pods" "external" (eq $m.type "Pods") -}}
---
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "aerie.componentName" . }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "aerie.labels" . | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "aerie.componentName" . }}
  minReplicas: {{ $as.minReplicas | int }}
  maxReplicas: {{ $as.maxReplicas | int }}
  metrics:
    - type: {{ $m.type }}
      {{ $source }}:
        metric:
          name: {{ required (printf "%s.autoscaling.metric.name is required" .key) $m.name }}
          {{- with $m.selector }}
          selector:
            matchLabels:
              {{- toYaml . | nindent 14 }}
          {{- end }}
        target:
          type: AverageValue
          averageValue: {{ $m.averageValue | quote }}
    {{- with $as.extraMetrics }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $as.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}
