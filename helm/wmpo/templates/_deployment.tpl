{{/*
One Deployment of the chart: the simulator API, its queue workers, the judge or the trainer.
Call with a dict:
  root          $
  component     simulator | worker | judge | trainer | optimizer (labels, names, the container's name)
  role          the role's values: replicaCount, resources, gpu, terminationGracePeriodSeconds,
                preStopSleepSeconds, podLabels, podAnnotations, nodeSelector, tolerations,
                affinity, topologySpreadConstraints
  settings      the component whose ConfigMap it reads (the workers read the simulator's)
  autoscaled    true: no replicas field (an HPA or KEDA owns it)
  strategy      the Deployment strategy (a dict), or absent
  args          for "wmpo.args": service, ports, extra
  env           for "wmpo.env": consumeQueue, serviceKeyEnv, extraEnv
  checkpoint    the role's checkpoint values (path, volume, mountPath), or absent
  data          {claimName, mountPath}: a writable data volume, or absent
*/}}
{{- define "wmpo.deployment" -}}
{{- $root := .root }}
{{- $role := .role }}
{{- $selector := include "wmpo.componentSelectorLabels" (dict "root" $root "component" .component) }}
{{- $settings := dict "root" $root "component" .settings }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "wmpo.componentName" (dict "root" $root "component" .component) }}
  labels:
    {{- include "wmpo.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  {{- if not .autoscaled }}
  replicas: {{ $role.replicaCount }}
  {{- end }}
  selector:
    matchLabels:
      {{- $selector | nindent 6 }}
  {{- with .strategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- $selector | nindent 8 }}
        {{- with $role.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/settings: {{ include "wmpo.settings" $settings | sha256sum }}
        checksum/secrets: {{ toJson (list $root.Values.apiKeys $root.Values.redis) | sha256sum }}
        {{- with $role.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "wmpo.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      {{- $preStop := int (default 0 $role.preStopSleepSeconds) }}
      terminationGracePeriodSeconds: {{ add $role.terminationGracePeriodSeconds $preStop }}
      containers:
        - name: {{ .component }}
          image: {{ include "wmpo.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          args:
            {{- include "wmpo.args" .args | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ .args.ports.http }}
              protocol: TCP
            {{- with .args.ports.grpc }}
            - name: grpc
              containerPort: {{ . }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "wmpo.settingsName" $settings }}
          env:
            {{- include "wmpo.env" (merge (dict "root" $root) .env) | nindent 12 }}
          {{- include "wmpo.probes" $root | nindent 10 }}
          {{- if gt $preStop 0 }}
          lifecycle:
            preStop:
              exec:
                command: ["sleep", {{ $preStop | toString | quote }}]
          {{- end }}
          resources:
            {{- include "wmpo.resources" $role | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- with .checkpoint }}{{ if .volume }}
            - name: checkpoint
              mountPath: {{ .mountPath }}
              readOnly: true
            {{- end }}{{ end }}
            {{- with .data }}
            - name: data
              mountPath: {{ .mountPath }}
            {{- end }}
      volumes:
        # Writable /tmp: the root filesystem is read-only.
        - name: tmp
          emptyDir: {}
        {{- with .checkpoint }}{{ if .volume }}
        - name: checkpoint
          {{- toYaml .volume | nindent 10 }}
        {{- end }}{{ end }}
        {{- with .data }}
        - name: data
          persistentVolumeClaim:
            claimName: {{ .claimName }}
        {{- end }}
      {{- with $role.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $role.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/*
The HTTP + gRPC Service of a component. Call with (dict "root" $ "component" NAME
"service" VALUES "ports" {http, grpc}): VALUES has type, annotations and optionally
sessionAffinity / sessionAffinityTimeoutSeconds.
*/}}
{{- define "wmpo.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "wmpo.componentName" . }}
  labels:
    {{- include "wmpo.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
  {{- with .service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .service.type }}
  {{- with .service.sessionAffinity }}
  sessionAffinity: {{ . }}
  {{- end }}
  {{- if eq (default "None" .service.sessionAffinity) "ClientIP" }}
  sessionAffinityConfig:
    clientIP:
      timeoutSeconds: {{ .service.sessionAffinityTimeoutSeconds }}
  {{- end }}
  selector:
    {{- include "wmpo.componentSelectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .ports.http }}
      targetPort: http
      protocol: TCP
    - name: grpc
      port: {{ .ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: grpc
{{- end }}

{{/* A component's PodDisruptionBudget. Call with (dict "root" $ "component" NAME "budget" VALUES). */}}
{{- define "wmpo.podDisruptionBudget" -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "wmpo.componentName" . }}
  labels:
    {{- include "wmpo.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  maxUnavailable: {{ .budget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "wmpo.componentSelectorLabels" . | nindent 6 }}
{{- end }}

{{/* A component's settings ConfigMap. Call with (dict "root" $ "component" NAME). */}}
{{- define "wmpo.configMap" -}}
{{- $settings := include "wmpo.settings" . | fromJson }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "wmpo.settingsName" . }}
  labels:
    {{- include "wmpo.labels" .root | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
data:
  {{- if not $settings }} {}{{ end }}
  {{- /* Settings as WMPO_<FIELD> variables. Numbers go through toJson: Helm reads them as
    floats, and toString would print large ones in exponent form (6.7108864e+07). */}}
  {{- range $key, $value := $settings }}
  WMPO_{{ upper $key }}: {{ ternary $value (toJson $value) (kindIs "string" $value) | quote }}
  {{- end }}
{{- end }}
