{{/*
Names and labels.
*/}}
{{- define "sonora.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every resource name: the release name, followed by the chart
name unless the release name already contains it. Kept to 40 characters so
that "<fullname>-audio-generation-migrate" still fits in 63.
*/}}
{{- define "sonora.fullname" -}}
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

{{- define "sonora.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every resource. */}}
{{- define "sonora.labels" -}}
helm.sh/chart: {{ include "sonora.chart" . }}
app.kubernetes.io/part-of: {{ include "sonora.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
Selector labels of one service. Call with (dict "root" $ "service" "gateway").
*/}}
{{- define "sonora.selectorLabels" -}}
app.kubernetes.io/name: {{ .service }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{/* The resource name of one service: (dict "root" $ "service" "gateway"). */}}
{{- define "sonora.serviceName" -}}
{{- printf "%s-%s" (include "sonora.fullname" .root) .service | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sonora.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sonora.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The Secret holding DATABASE_URL, REDIS_URL, the webhook secret encryption keys
and the internal signing keys of the services that call others.
*/}}
{{- define "sonora.secretName" -}}
{{- if .Values.secrets.existingSecret -}}
{{- .Values.secrets.existingSecret -}}
{{- else -}}
{{- printf "%s-secrets" (include "sonora.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
INTERNAL_AUTH_TRUSTED_KEYS as the services read it: internalAuth.trustedKeys,
a list of "<service>=ipk_..." entries (or one comma-separated string), joined
with commas. Empty when none is set.
*/}}
{{- define "sonora.trustedKeys" -}}
{{- $t := .Values.internalAuth.trustedKeys -}}
{{- if kindIs "slice" $t -}}
{{- $entries := list -}}
{{- range $t -}}
{{- if . -}}
{{- $entries = append $entries (trim (toString .)) -}}
{{- end -}}
{{- end -}}
{{- join "," $entries -}}
{{- else if $t -}}
{{- trim (toString $t) -}}
{{- end -}}
{{- end -}}

{{/*
The ops port of one service, which serves /health, /ready and /metrics to the
probes and Prometheus, given its values: ports.ops for gateway and
webhook-ingest (their http port is public and answers 404 for /ready and
/metrics), ports.http for the others. "sonora.opsPortName" is its name in the
Pod and the Service: "ops" or "http". The Ingress only ever uses "http" of the
public services.
*/}}
{{- define "sonora.opsPort" -}}
{{- .ports.ops | default .ports.http -}}
{{- end -}}

{{- define "sonora.opsPortName" -}}
{{- if .ports.ops -}}ops{{- else -}}http{{- end -}}
{{- end -}}

{{/* The image of one service: (dict "root" $ "service" "gateway"). */}}
{{- define "sonora.image" -}}
{{- $img := .root.Values.image -}}
{{- $tag := default .root.Chart.AppVersion $img.tag -}}
{{- if $img.registry -}}
{{- printf "%s/%s/%s:%s" $img.registry $img.repository .service $tag -}}
{{- else -}}
{{- printf "%s/%s:%s" $img.repository .service $tag -}}
{{- end -}}
{{- end -}}

{{/*
What the chart knows about each service and never asks for in values: which
stores it uses, whether it needs the webhook secret encryption keys
(encryption), which gRPC peers it calls (a service with peers signs its calls
with its own INTERNAL_AUTH_KEY), and whether it serves gRPC (serves: it then
needs INTERNAL_AUTH_TRUSTED_KEYS). Read with
  $catalog := include "sonora.catalog" . | fromYaml
*/}}
{{- define "sonora.catalog" -}}
gateway:
  component: api
  public: true
  database: true
  redis: true
  encryption: false
  peers: [tts-inference, audio-generation, delivery-worker, webhook-ingest]
  serves: false
webhook-ingest:
  component: webhooks
  public: true
  database: true
  redis: true
  encryption: true
  peers: [audio-generation, delivery-worker]
  serves: true
tts-inference:
  component: inference
  public: false
  database: false
  redis: false
  encryption: false
  peers: []
  serves: true
audio-generation:
  component: audio
  public: false
  database: true
  redis: false
  encryption: false
  peers: [delivery-worker]
  serves: true
delivery-worker:
  component: delivery
  public: false
  database: true
  redis: false
  encryption: true
  peers: []
  serves: true
replicate-simulator:
  component: simulator
  public: false
  database: false
  redis: false
  encryption: false
  peers: []
  serves: false
{{- end -}}

{{/*
The enabled services as a YAML map of name -> values, in a fixed order.
Read with $services := include "sonora.enabledServices" . | fromYaml
*/}}
{{- define "sonora.enabledServices" -}}
{{- $out := dict -}}
{{- range $name := list "gateway" "webhook-ingest" "tts-inference" "audio-generation" "delivery-worker" -}}
{{- $v := index $.Values.services $name -}}
{{- if $v.enabled -}}
{{- $_ := set $out $name $v -}}
{{- end -}}
{{- end -}}
{{- if .Values.replicateSimulator.enabled -}}
{{- $_ := set $out "replicate-simulator" .Values.replicateSimulator -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
The environment of one service's container, after envFrom the shared ConfigMap:
(dict "root" $ "service" "gateway" "values" $v).
*/}}
{{- define "sonora.env" -}}
{{- $root := .root -}}
{{- $name := .service -}}
{{- $v := .values -}}
{{- $catalog := include "sonora.catalog" $root | fromYaml -}}
{{- $facts := index $catalog $name -}}
{{- $defaults := dict "OTEL_SERVICE_NAME" $name "HTTP_ADDR" (printf "0.0.0.0:%v" $v.ports.http) -}}
{{- if $v.ports.grpc -}}
{{- $_ := set $defaults "GRPC_ADDR" (printf "0.0.0.0:%v" $v.ports.grpc) -}}
{{- end -}}
{{- if $v.ports.ops -}}
{{- $_ := set $defaults "OPS_ADDR" (printf "0.0.0.0:%v" $v.ports.ops) -}}
{{- end -}}
{{- range $peer := $facts.peers -}}
{{- $peerValues := index $root.Values.services $peer -}}
{{- $var := printf "%s_URL" ($peer | upper | replace "-" "_") -}}
{{- $url := printf "http://%s:%v" (include "sonora.serviceName" (dict "root" $root "service" $peer)) $peerValues.ports.grpc -}}
{{- $_ := set $defaults $var $url -}}
{{- end -}}
{{- if eq $name "replicate-simulator" -}}
{{- /* Its output file URLs must be reachable from the other pods, not 127.0.0.1. */ -}}
{{- $_ := set $defaults "SIMULATOR_PUBLIC_URL" (printf "http://%s:%v" (include "sonora.serviceName" (dict "root" $root "service" $name)) $v.ports.http) -}}
{{- end -}}
{{- if $facts.serves -}}
{{- /* Always rendered for a gRPC server, even empty: the service reads an empty
value as unset and stops at start-up naming the setting (NOTES warns). */ -}}
{{- $_ := set $defaults "INTERNAL_AUTH_TRUSTED_KEYS" (include "sonora.trustedKeys" $root) -}}
{{- end -}}
{{- $env := merge (dict) $defaults -}}
{{- range $k, $val := $v.env -}}
{{- if not (kindIs "invalid" $val) -}}
{{- if ne (toString $val) "" -}}
{{- $_ := set $env $k (toString $val) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- range $k := keys $env | sortAlpha }}
- name: {{ $k }}
  value: {{ index $env $k | quote }}
{{- end }}
{{- if $facts.database }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.databaseUrlKey }}
{{- end }}
{{- if $facts.redis }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.redisUrlKey }}
{{- end }}
{{- if and $facts.peers (not (hasKey $env "INTERNAL_AUTH_KEY_FILE")) }}
{{- /* The service's own signing key, and no other service's. */}}
- name: INTERNAL_AUTH_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ (index $root.Values.internalAuth $name).signingKeyKey }}
{{- end }}
{{- if and (eq $name "tts-inference") (not (hasKey $env "RAYON_NUM_THREADS")) }}
{{- /* Inference's thread pools (rayon, candle) follow the CPU limit, not the node's cores. */}}
- name: RAYON_NUM_THREADS
  valueFrom:
    resourceFieldRef:
      resource: limits.cpu
      divisor: "1"
{{- end }}
{{- if eq $name "replicate-simulator" }}
{{- /* It signs with the secret webhook-ingest verifies with. */}}
- name: REPLICATE_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.replicateWebhookSecretKey }}
      optional: true
- name: SIMULATOR_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.simulatorApiTokenKey }}
      optional: true
{{- end }}
{{- if eq $name "webhook-ingest" }}
- name: REPLICATE_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.replicateWebhookSecretKey }}
      # Until it is set, Replicate webhooks are refused.
      optional: true
- name: GITHUB_WEBHOOK_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.githubWebhookSecretKey }}
      # Until it is set, GitHub deliveries are refused.
      optional: true
- name: REPLICATE_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.replicateApiTokenKey }}
      # Optional: with it, Replicate's signing secret is fetched and kept current.
      optional: true
- name: CODEGEN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.codegenTokenKey }}
      # Optional: needed only by routing rules that start agent runs.
      optional: true
{{- end }}
{{- if eq $name "gateway" }}
{{- /* The pepper API keys are hashed with: the gateway's alone. */}}
- name: API_KEY_PEPPER
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.apiKeyPepperKey }}
      # Required in production, where the gateway stops at start-up naming it;
      # a development gateway without it uses its development pepper.
      optional: true
- name: TWILIO_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.twilioAuthTokenKey }}
      # Without it telephony is off.
      optional: true
{{- end }}
{{- if and (eq $name "audio-generation") (not (hasKey $env "AUDIO_STORAGE_S3_SECRET_ACCESS_KEY_FILE")) }}
- name: AUDIO_STORAGE_S3_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.audioStorageS3SecretAccessKeyKey }}
      # Only with a bucket (AUDIO_STORAGE_URL) and its access key id.
      optional: true
{{- end }}
{{- if eq $name "audio-generation" }}
- name: REPLICATE_API_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.replicateApiTokenKey }}
      # Until it is set, jobs are recorded but not submitted (a warning is logged).
      optional: true
{{- end }}
{{- if $facts.encryption }}
- name: WEBHOOK_SECRET_ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.webhookSecretEncryptionKeyKey }}
- name: WEBHOOK_SECRET_ENCRYPTION_PREVIOUS_KEYS
  valueFrom:
    secretKeyRef:
      name: {{ include "sonora.secretName" $root }}
      key: {{ $root.Values.secrets.webhookSecretEncryptionPreviousKeysKey }}
      # Only present during a key rotation.
      optional: true
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
One container of the migrations Job: runs `<service> migrate` with the shared
settings inline (a hook runs before the release's ConfigMap exists).
(dict "root" $ "service" "gateway" "secretName" "...")
*/}}
{{- define "sonora.migrateContainer" -}}
{{- $root := .root -}}
- name: {{ .service }}
  image: {{ include "sonora.image" (dict "root" $root "service" .service) | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: ["migrate"]
  env:
    - name: OTEL_SERVICE_NAME
      value: {{ .service | quote }}
    {{- range $k, $val := $root.Values.config }}
    {{- if and (not (kindIs "invalid" $val)) (ne (toString $val) "") }}
    - name: {{ $k }}
      value: {{ toString $val | quote }}
    {{- end }}
    {{- end }}
    - name: DATABASE_URL
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ $root.Values.secrets.databaseUrlKey }}
    {{- $facts := index (include "sonora.catalog" $root | fromYaml) .service }}
    {{- if $facts.redis }}
    {{- /* `gateway migrate` and `webhook-ingest migrate` load every setting of
    their service, and REDIS_URL is required: without it the command stops
    with exit code 64. Migrating does not use Redis. */}}
    - name: REDIS_URL
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ $root.Values.secrets.redisUrlKey }}
    {{- end }}
    {{- if eq .service "gateway" }}
    {{- /* Required by every gateway command in production (not used here). */}}
    - name: API_KEY_PEPPER
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ $root.Values.secrets.apiKeyPepperKey }}
          optional: true
    {{- end }}
    {{- if $facts.encryption }}
    {{- /* `delivery-worker migrate` loads every delivery-worker setting, and
    WEBHOOK_SECRET_ENCRYPTION_KEY is required: without it the command stops
    with exit code 64. It does not use the key. */}}
    - name: WEBHOOK_SECRET_ENCRYPTION_KEY
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ $root.Values.secrets.webhookSecretEncryptionKeyKey }}
    {{- end }}
  resources:
    {{- toYaml $root.Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
{{- end -}}
