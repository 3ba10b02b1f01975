{{/*
A worker role (draft or target): Deployment, Service, PodDisruptionBudget and
HorizontalPodAutoscaler. The dict carries, besides root/component/block/key:
  subcommand  the aerie subcommand (draft-worker | target-worker)
  roleArgs    the role's own flags, after the shared ones
  gpus        GPUs per pod when the role runs on a GPU
  grace       terminationGracePeriodSeconds
  shm         true to mount a memory-backed /dev/shm
*/}}
{{- define "aerie.worker" -}}
{{- $root := .root -}}
{{- $b := .block -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "aerie.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aerie.labels" . | nindent 4 }}
spec:
  {{- if not $b.autoscaling.enabled }}
  replicas: {{ $b.replicas | int }}
  {{- end }}
  {{- with $b.strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "aerie.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      {{- include "aerie.podMetadata" (merge (dict "annotations" $b.podAnnotations) .) | nindent 6 }}
    spec:
      {{- include "aerie.podSpecCommon" . | nindent 6 }}
      containers:
        {{- include "aerie.workerContainer" . | nindent 8 }}
      volumes:
        {{- include "aerie.modelVolume" $root | nindent 8 }}
        {{- if .shm }}
        - name: dshm
          emptyDir:
            medium: Memory
            {{- with .shmSizeLimit }}
            sizeLimit: {{ . }}
            {{- end }}
        {{- end }}
        {{- with $b.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
---
apiVersion: v1
kind: Service
metadata:
  name: {{ include "aerie.componentName" . }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "aerie.labels" . | nindent 4 }}
    {{- with $b.service.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $b.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: ClusterIP
  {{- if $b.service.headless }}
  clusterIP: None
  {{- end }}
  selector:
    {{- include "aerie.selectorLabels" . | nindent 4 }}
  ports:
    - name: grpc
      port: {{ $b.port | int }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
    - name: metrics
      port: {{ $b.metricsPort | int }}
      targetPort: metrics
      protocol: TCP
{{- include "aerie.pdb" . }}
{{- include "aerie.hpa" . }}
{{- end -}}

{{/*
One worker container (the same dict as aerie.worker). The colocated layout
puts two of these, target and draft, in one pod.
*/}}
{{- define "aerie.workerContainer" -}}
{{- $root := .root -}}
{{- $b := .block -}}
- name: {{ .component }}
  image: {{ include "aerie.image" . | quote }}
  imagePullPolicy: {{ include "aerie.imagePullPolicy" . }}
  args:
    - {{ .subcommand }}
    - --model-path
    - {{ include "aerie.modelPath" . | quote }}
    - --host
    - "0.0.0.0"
    - --port
    - {{ $b.port | int | quote }}
    - --metrics-port
    - {{ $b.metricsPort | int | quote }}
    - --etcd-endpoints
    - {{ include "aerie.etcdEndpoints" $root | quote }}
    - --cluster
    - {{ include "aerie.cluster" $root | quote }}
    - --advertise-addr
    - {{ printf "http://$(POD_IP):%d" (int $b.port) | quote }}
    {{- range .roleArgs }}
    - {{ . | quote }}
    {{- end }}
    {{- range $b.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  env:
    {{- include "aerie.podEnv" . | nindent 4 }}
    {{- include "aerie.env" . | nindent 4 }}
  {{- with $b.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: {{ .grpcPortName | default "grpc" }}
      containerPort: {{ $b.port | int }}
      protocol: TCP
    - name: {{ .metricsPortName | default "metrics" }}
      containerPort: {{ $b.metricsPort | int }}
      protocol: TCP
  {{- include "aerie.probes" (merge (dict "port" (.metricsPortName | default "metrics")) .) | trim | nindent 2 }}
  {{- with (include "aerie.resources" .) }}
  resources:
    {{- . | nindent 4 }}
  {{- end }}
  {{- with $root.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- include "aerie.modelVolumeMount" $root | nindent 4 }}
    {{- if .shm }}
    - name: dshm
      mountPath: /dev/shm
    {{- end }}
    {{- with $b.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
