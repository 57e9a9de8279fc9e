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

{{/*
Resource names: <fullname>-<component>, the component one of simulator (the API), worker,
judge, trainer. Call "wmpo.componentName" with (dict "root" $ "component" NAME).
*/}}
{{- define "wmpo.componentName" -}}
{{- printf "%s-%s" (include "wmpo.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "wmpo.apiName" -}}
{{- include "wmpo.componentName" (dict "root" . "component" "simulator") }}
{{- end }}

{{- define "wmpo.workerName" -}}
{{- include "wmpo.componentName" (dict "root" . "component" "worker") }}
{{- end }}

{{- define "wmpo.judgeName" -}}
{{- include "wmpo.componentName" (dict "root" . "component" "judge") }}
{{- end }}

{{- define "wmpo.trainerName" -}}
{{- include "wmpo.componentName" (dict "root" . "component" "trainer") }}
{{- end }}

{{- define "wmpo.tritonName" -}}
{{- include "wmpo.componentName" (dict "root" . "component" "triton") }}
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

{{/* The Secret entry with the one key the services send each other (simulator -> judge,
trainer -> simulator and judge): the chart's `service-api-key`, or in an existing Secret
apiKeys.serviceKeySecretKey, else its API key entry itself (then a single key). */}}
{{- define "wmpo.serviceKeySecretKey" -}}
{{- if not .Values.apiKeys.existingSecret }}service-api-key
{{- else }}{{ default .Values.apiKeys.existingSecretKey .Values.apiKeys.serviceKeySecretKey }}{{ end }}
{{- end }}

{{/* "true" when the service key is an entry of its own (the chart's Secret, or
apiKeys.serviceKeySecretKey): the services it calls then accept it as WMPO_SERVICE_API_KEYS. */}}
{{- define "wmpo.separateServiceKey" -}}
{{- if or (not .Values.apiKeys.existingSecret) .Values.apiKeys.serviceKeySecretKey }}true{{ end }}
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

{{/* The in-cluster URL of a component's HTTP Service. Call with (dict "root" $ "component" NAME "port" PORT). */}}
{{- define "wmpo.url" -}}
{{- printf "http://%s:%v" (include "wmpo.componentName" .) .port }}
{{- end }}

{{/*
A service's settings as JSON, its ConfigMap's WMPO_* variables: the role's `settings` over
the URLs of the chart's other services (a URL set in `settings` wins). Call with
(dict "root" $ "component" simulator|judge|trainer|optimizer).
*/}}
{{- define "wmpo.settings" -}}
{{- $v := .root.Values }}
{{- $urls := dict }}
{{- if $v.judge.enabled }}
{{- $_ := set $urls "judge_url" (include "wmpo.url" (dict "root" .root "component" "judge" "port" $v.judge.ports.http)) }}
{{- end }}
{{- if eq .component "simulator" }}
{{- if $v.triton.enabled }}
{{- /* The DiT on the chart's Triton (gRPC); Triton is in another pod: no shared memory. */}}
{{- $_ := set $urls "backend" "triton" }}
{{- $_ := set $urls "triton_url" (printf "%s:%v" (include "wmpo.tritonName" .root) $v.triton.ports.grpc) }}
{{- $_ := set $urls "triton_shm" "off" }}
{{- /* Wait for Triton's models (their TensorRT build may still run) within the startup
  probe's budget, less a minute for loading the checkpoint: after it the pod restarts. */}}
{{- $budget := mul $v.probes.startup.periodSeconds $v.probes.startup.failureThreshold }}
{{- $_ := set $urls "triton_startup_timeout_s" (max 30 (sub $budget 60)) }}
{{- end }}
{{- merge (deepCopy $v.settings) $urls | toJson }}
{{- else if eq .component "judge" }}
{{- $v.judge.settings | toJson }}
{{- else if eq .component "optimizer" }}
{{- $v.optimizer.settings | toJson }}
{{- else }}
{{- $_ := set $urls "simulator_url" (include "wmpo.url" (dict "root" .root "component" "simulator" "port" $v.ports.http)) }}
{{- merge (deepCopy $v.trainer.settings) $urls | toJson }}
{{- end }}
{{- end }}

{{- define "wmpo.settingsName" -}}
{{- printf "%s-settings" (include "wmpo.componentName" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Environment of every container: settings from its ConfigMap (envFrom), secrets by
reference. Call with (dict "root" $ "consumeQueue" BOOL "serviceKeyEnv" NAMES "extraEnv" LIST
"acceptServiceKey" BOOL "noRedis" BOOL): serviceKeyEnv, the variables that get the service key
(e.g. WMPO_JUDGE_API_KEY); acceptServiceKey, whether other services call this one with it;
noRedis, a service the chart runs without queue mode (the optimizer) that must not get the
Redis URL.
*/}}
{{- define "wmpo.env" -}}
- name: WMPO_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "wmpo.apiKeysSecretName" .root }}
      key: {{ include "wmpo.apiKeysSecretKey" .root }}
{{- if and .acceptServiceKey (include "wmpo.separateServiceKey" .root) }}
- name: WMPO_SERVICE_API_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "wmpo.apiKeysSecretName" .root }}
      key: {{ include "wmpo.serviceKeySecretKey" .root }}
{{- end }}
{{- if and (include "wmpo.redisEnabled" .root) (not .noRedis) }}
- name: WMPO_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "wmpo.redisSecretName" .root }}
      key: {{ include "wmpo.redisSecretKey" .root }}
{{- end }}
{{- range .serviceKeyEnv }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ include "wmpo.apiKeysSecretName" $.root }}
      key: {{ include "wmpo.serviceKeySecretKey" $.root }}
{{- end }}
{{- with .extraEnv }}
{{ toYaml . }}
{{- end }}
- name: WMPO_QUEUE_WORKER
  value: {{ .consumeQueue | toString | quote }}
- name: TMPDIR
  value: /tmp
- name: XDG_CACHE_HOME
  value: /tmp/.cache
{{- end }}

{{/* A container's args after the image's `wmpo serve`: the service, then its flags. */}}
{{- define "wmpo.args" -}}
- {{ .service }}
- --host
- "0.0.0.0"
- --port
- {{ .ports.http | toString | quote }}
{{- if .ports.grpc }}
- --grpc-port
- {{ .ports.grpc | toString | quote }}
{{- end }}
{{- range .extra }}
- {{ . | toString | toYaml }}
{{- end }}
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
{{- if .Values.worker.enabled }}
{{- include "wmpo.validateDrain" (dict "prefix" "worker" "role" .Values.worker "settings" .Values.settings) }}
{{- end }}
{{- include "wmpo.validateCheckpoint" (dict "checkpoint" .Values.checkpoint "prefix" "checkpoint") }}
{{- if .Values.judge.enabled }}
{{- include "wmpo.validateCheckpoint" (dict "checkpoint" .Values.judge.checkpoint "prefix" "judge.checkpoint") }}
{{- if and (not .Values.judge.checkpoint.path) (not .Values.judge.settings.vlm_url) }}
{{- fail "judge.checkpoint.path is empty (no classifier): set judge.settings.vlm_url for a VLM-only judge" }}
{{- end }}
{{- end }}
{{- if .Values.optimizer.enabled }}
{{- $c := .Values.optimizer.checkpoint }}
{{- if not (and $c.generator $c.trajectoryVae) }}
{{- fail "optimizer.enabled needs optimizer.checkpoint.generator and optimizer.checkpoint.trajectoryVae (the image bundles them under /app/checkpoints; or mount your own with optimizer.checkpoint.volume)" }}
{{- end }}
{{- range $field := list "generator" "trajectoryVae" "inverseDynamics" "worldModel" }}
{{- $path := index $c $field }}
{{- if and $path $c.volume (not (hasPrefix (printf "%s/" (trimSuffix "/" $c.mountPath)) $path)) }}
{{- fail (printf "optimizer.checkpoint.%s=%s is not inside optimizer.checkpoint.mountPath=%s, where optimizer.checkpoint.volume is mounted" $field $path $c.mountPath) }}
{{- end }}
{{- end }}
{{- end }}
{{- if .Values.triton.enabled }}
{{- $t := .Values.triton }}
{{- if and .Values.settings.backend (ne .Values.settings.backend "triton") }}
{{- fail (printf "triton.enabled runs the simulator's DiT on the chart's Triton, but settings.backend=%s: remove it (or disable triton)" .Values.settings.backend) }}
{{- end }}
{{- if and $t.build.enabled (eq $t.build.variant "tensorrt_plan") (eq (int $t.gpu) 0) }}
{{- fail "triton.build.variant=tensorrt_plan builds and serves TensorRT plans on a GPU: set triton.gpu (or variant onnxruntime_onnx for CPU)" }}
{{- end }}
{{- if and (not $t.build.enabled) (not $t.modelRepository.volume) }}
{{- fail "triton.build.enabled=false needs a prepared repository: set triton.modelRepository.volume (else Triton serves an empty emptyDir)" }}
{{- end }}
{{- if and $t.build.enabled (gt (int (default 16 .Values.settings.max_batch_size)) (int $t.build.maxBatch)) }}
{{- fail (printf "settings.max_batch_size=%v exceeds triton.build.maxBatch=%v: each denoising call sends up to max_batch_size rollouts, more than Triton's max_batch_size" (default 16 .Values.settings.max_batch_size) $t.build.maxBatch) }}
{{- end }}
{{- if gt (int $t.build.optBatch) (int $t.build.maxBatch) }}
{{- fail (printf "triton.build.optBatch=%v must not exceed triton.build.maxBatch=%v" $t.build.optBatch $t.build.maxBatch) }}
{{- end }}
{{- end }}
{{- if and .Values.apiKeys.serviceKeySecretKey (not .Values.apiKeys.existingSecret) }}
{{- fail "apiKeys.serviceKeySecretKey names an entry of apiKeys.existingSecret: the chart's own Secret has service-api-key" }}
{{- end }}
{{- if .Values.trainer.enabled }}
{{- $trainer := .Values.trainer }}
{{- if not (include "wmpo.settings" (dict "root" . "component" "trainer") | fromJson).judge_url }}
{{- fail "the trainer's jobs need a judge: set judge.enabled or trainer.settings.judge_url" }}
{{- end }}
{{- if and (gt (int $trainer.replicaCount) 1) (not (include "wmpo.redisEnabled" .)) }}
{{- fail "trainer.replicaCount > 1 needs Redis (set redis.url or redis.existingSecret): without it one trainer keeps the job records on its volume" }}
{{- end }}
{{- if and (gt (int $trainer.replicaCount) 1) (not $trainer.persistence.existingClaim) (not (has "ReadWriteMany" $trainer.persistence.accessModes)) }}
{{- fail "trainer.replicaCount > 1: replicas share the data volume, so trainer.persistence.accessModes needs ReadWriteMany" }}
{{- end }}
{{- include "wmpo.validateDrain" (dict "prefix" "trainer" "role" $trainer "settings" $trainer.settings) }}
{{- end }}
{{- end }}

{{/* checkpoint.path inside checkpoint.mountPath when a volume is mounted there. */}}
{{- define "wmpo.validateCheckpoint" -}}
{{- $c := .checkpoint }}
{{- if and $c.volume (not (hasPrefix (printf "%s/" (trimSuffix "/" $c.mountPath)) $c.path)) }}
{{- fail (printf "%s.path=%s is not inside %s.mountPath=%s, where %s.volume is mounted" .prefix $c.path .prefix $c.mountPath .prefix) }}
{{- end }}
{{- end }}

{{/* A stopping pod gets longer than settings.queue_drain_s to finish what it has taken. */}}
{{- define "wmpo.validateDrain" -}}
{{- $drain := default 30 .settings.queue_drain_s }}
{{- if le (float64 .role.terminationGracePeriodSeconds) (float64 $drain) }}
{{- fail (printf "%s.terminationGracePeriodSeconds=%v must exceed %s=%v, or Kubernetes kills a draining %s" .prefix .role.terminationGracePeriodSeconds (ternary "settings.queue_drain_s" (printf "%s.settings.queue_drain_s" .prefix) (eq .prefix "worker")) $drain .prefix) }}
{{- end }}
{{- end }}

{{- define "wmpo.trainerClaimName" -}}
{{- default (printf "%s-data" (include "wmpo.trainerName" .)) .Values.trainer.persistence.existingClaim }}
{{- end }}
