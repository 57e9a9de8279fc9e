{{/* Names: release-scoped, at most 63 characters (a DNS label). */}}
{{- define "wmpo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wmpo.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The API Deployment/Service and the worker Deployment: <fullname>-<component>. */}}
{{- define "wmpo.apiName" -}}
{{- printf "%s-simulator" (include "wmpo.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wmpo.workerName" -}}
{{- printf "%s-worker" (include "wmpo.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wmpo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "wmpo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "wmpo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wmpo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Selector labels of one component: "simulator" (API replicas) or "worker". */}}
{{- define "wmpo.componentSelectorLabels" -}}
{{ include "wmpo.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "wmpo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wmpo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "wmpo.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the chart creates (API keys, Redis URL). */}}
{{- define "wmpo.secretName" -}}
{{- printf "%s-secrets" (include "wmpo.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wmpo.apiKeysSecretName" -}}
{{- default (include "wmpo.secretName" .) .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "wmpo.apiKeysSecretKey" -}}
{{- if .Values.apiKeys.existingSecret }}{{ .Values.apiKeys.existingSecretKey }}{{ else }}api-keys{{ end }}
{{- end }}

{{/* Queue mode: a Redis URL given inline or through an existing Secret. */}}
{{- define "wmpo.redisEnabled" -}}
{{- if or .Values.redis.url .Values.redis.existingSecret }}true{{ end }}
{{- end }}

{{- define "wmpo.redisSecretName" -}}
{{- default (include "wmpo.secretName" .) .Values.redis.existingSecret }}
{{- end }}

{{- define "wmpo.redisSecretKey" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretKey }}{{ else }}redis-url{{ end }}
{{- end }}

{{/*
The Redis stream the workers consume and KEDA watches: services/common/queues.py keys a
queue as "<queue_prefix>:{<queue name>}:requests"; the imagine queue is
"simulator.imagine" (services/simulator/imagine_queue.py), its consumer group "workers".
*/}}
{{- define "wmpo.imagineStream" -}}
{{- printf "%s:{simulator.imagine}:requests" (default "wmpo" .Values.settings.queue_prefix) }}
{{- end }}

{{/*
Environment shared by every container: settings from the ConfigMap, secrets by
reference. Call with (dict "root" $ "consumeQueue" BOOL).
*/}}
{{- define "wmpo.env" -}}
- name: WMPO_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "wmpo.apiKeysSecretName" .root }}
      key: {{ include "wmpo.apiKeysSecretKey" .root }}
{{- if include "wmpo.redisEnabled" .root }}
- name: WMPO_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "wmpo.redisSecretName" .root }}
      key: {{ include "wmpo.redisSecretKey" .root }}
{{- end }}
- name: WMPO_QUEUE_WORKER
  value: {{ .consumeQueue | toString | quote }}
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- end }}

{{/* The container's arguments, appended to the image's `wmpo serve simulator --host 0.0.0.0`. */}}
{{- define "wmpo.args" -}}
- --port
- {{ .Values.ports.http | toString | quote }}
- --grpc-port
- {{ .Values.ports.grpc | toString | quote }}
- --checkpoint
- {{ .Values.checkpoint.path | quote }}
{{- end }}

{{/* Probes on the real health routes (services/common/health.py). */}}
{{- define "wmpo.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
livenessProbe:
  httpGet:
    path: /healthz
    port: http
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
readinessProbe:
  httpGet:
    path: /readyz
    port: http
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
{{- end }}

{{/* Resources of one role, with its GPUs as the nvidia.com/gpu limit. Call with the role's values. */}}
{{- define "wmpo.resources" -}}
{{- $resources := deepCopy (default dict .resources) }}
{{- if gt (int .gpu) 0 }}
{{- $limits := default dict $resources.limits }}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpu) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* Volumes and mounts: a writable /tmp (the root filesystem is read-only) and the checkpoint volume. */}}
{{- define "wmpo.volumes" -}}
- name: tmp
  emptyDir: {}
{{- with .Values.checkpoint.volume }}
- name: checkpoint
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "wmpo.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if .Values.checkpoint.volume }}
- name: checkpoint
  mountPath: {{ .Values.checkpoint.mountPath }}
  readOnly: true
{{- end }}
{{- end }}

{{/* Fail early on combinations the schema cannot express. */}}
{{- define "wmpo.validate" -}}
{{- if and .Values.apiKeys.keys .Values.apiKeys.existingSecret }}
{{- fail "set apiKeys.keys or apiKeys.existingSecret, not both" }}
{{- end }}
{{- if and .Values.redis.url .Values.redis.existingSecret }}
{{- fail "set redis.url or redis.existingSecret, not both" }}
{{- end }}
{{- if and .Values.worker.enabled (not (include "wmpo.redisEnabled" .)) }}
{{- fail "worker.enabled needs Redis: set redis.url or redis.existingSecret (the workers consume a Redis stream)" }}
{{- end }}
{{- if and .Values.worker.keda.enabled (not .Values.worker.enabled) }}
{{- fail "worker.keda.enabled scales the worker Deployment: set worker.enabled too" }}
{{- end }}
{{- if and .Values.worker.keda.enabled (not .Values.redis.url) (not .Values.worker.keda.address) }}
{{- fail "worker.keda.address (host:port) is required when the Redis URL comes from redis.existingSecret" }}
{{- end }}
{{- if and (include "wmpo.redisEnabled" .) (not .Values.api.consumeQueue) (not .Values.worker.enabled) }}
{{- fail "api.consumeQueue=false leaves queued work to workers: set worker.enabled (or consumeQueue back to true)" }}
{{- end }}
{{- if and .Values.redis.url (not (regexMatch "^rediss?://" .Values.redis.url)) }}
{{- fail "redis.url must start with redis:// or rediss://" }}
{{- end }}
{{- $drain := default 30 .Values.settings.queue_drain_s }}
{{- if and .Values.worker.enabled (le (float64 .Values.worker.terminationGracePeriodSeconds) (float64 $drain)) }}
{{- fail (printf "worker.terminationGracePeriodSeconds=%v must exceed settings.queue_drain_s=%v, or Kubernetes kills a draining worker" .Values.worker.terminationGracePeriodSeconds $drain) }}
{{- end }}
{{- if and .Values.checkpoint.volume (not (hasPrefix (printf "%s/" (trimSuffix "/" .Values.checkpoint.mountPath)) .Values.checkpoint.path)) }}
{{- fail (printf "checkpoint.path=%s is not inside checkpoint.mountPath=%s, where checkpoint.volume is mounted" .Values.checkpoint.path .Values.checkpoint.mountPath) }}
{{- end }}
{{- end }}
