{{/* Names, labels and the values every template shares. */}}

{{- define "farm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-farm, or the release name when it already says farm. */}}
{{- define "farm.fullname" -}}
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

{{/* The RayCluster. At most 40 characters: KubeRay builds pod and service names from it. */}}
{{- define "farm.cluster" -}}
{{- include "farm.fullname" . -}}
{{- end -}}

{{- define "farm.headService" -}}
{{- printf "%s-head-svc" (include "farm.cluster" .) -}}
{{- end -}}

{{/* Ray Client address of the head: how pods outside the RayCluster reach it. */}}
{{- define "farm.rayAddress" -}}
{{- printf "ray://%s.%s.svc:10001" (include "farm.headService" .) .Release.Namespace -}}
{{- end -}}

{{- define "farm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "farm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: farm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: include "farm.selectorLabels" (list . "controller") */}}
{{- define "farm.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "farm.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "farm.componentLabels" -}}
{{ include "farm.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "farm.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "farm.gpuImage" -}}
{{- $repo := default .Values.image.repository .Values.gpuImage.repository -}}
{{- $tag := default (printf "%s-cuda" (default .Chart.AppVersion .Values.image.tag)) .Values.gpuImage.tag -}}
{{- printf "%s:%s" $repo $tag -}}
{{- end -}}

{{- define "farm.settingsConfigMap" -}}
{{- printf "%s-settings" (include "farm.fullname" .) -}}
{{- end -}}

{{/* The Secret holding the S3 credentials, and fail clearly when there is none to use. */}}
{{- define "farm.s3Secret" -}}
{{- $s3 := .Values.store.s3 -}}
{{- if $s3.existingSecret -}}
{{- $s3.existingSecret -}}
{{- else if and $s3.accessKey $s3.secretKey -}}
{{- printf "%s-s3" (include "farm.fullname" .) -}}
{{- else -}}
{{- fail "farm: the S3 credentials are missing. Either create a Secret and name it in store.s3.existingSecret (kubectl create secret generic farm-s3 --from-literal=access-key=<user> --from-literal=secret-key=$(openssl rand -hex 24)), or set store.s3.existingSecret=\"\" with store.s3.accessKey and store.s3.secretKey so that the chart creates one." -}}
{{- end -}}
{{- end -}}

{{/* host:port of the S3 endpoint the farm uses. */}}
{{- define "farm.s3Endpoint" -}}
{{- if .Values.store.s3.endpoint -}}
{{- .Values.store.s3.endpoint -}}
{{- else if .Values.minio.enabled -}}
{{- printf "%s-minio.%s.svc:9000" (include "farm.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- fail "farm: no object storage: set store.s3.endpoint (host:port of an existing S3/MinIO) or minio.enabled=true" -}}
{{- end -}}
{{- end -}}

{{- define "farm.s3Secure" -}}
{{- if .Values.store.s3.endpoint -}}{{ .Values.store.s3.secure }}{{- else -}}false{{- end -}}
{{- end -}}

{{- define "farm.rayAuthSecret" -}}
{{- default (include "farm.cluster" .) .Values.ray.auth.secretName -}}
{{- end -}}

{{/* RAY_AUTH_MODE (and the token) for every container that speaks to Ray. */}}
{{- define "farm.rayAuthEnv" -}}
- name: RAY_AUTH_MODE
  value: {{ .Values.ray.auth.mode | quote }}
{{- if eq .Values.ray.auth.mode "token" }}
- name: RAY_AUTH_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "farm.rayAuthSecret" . }}
      key: auth_token
{{- end }}
{{- end -}}

{{/* The S3 credentials, from the Secret only. */}}
{{- define "farm.s3CredentialsEnv" -}}
- name: FARM_S3_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "farm.s3Secret" . }}
      key: {{ .Values.store.s3.accessKeyKey }}
- name: FARM_S3_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "farm.s3Secret" . }}
      key: {{ .Values.store.s3.secretKeyKey }}
{{- end -}}

{{/* Ray resources as the JSON string `ray start --resources` takes, quoted for KubeRay's shell line. */}}
{{- define "farm.rayResources" -}}
{{- printf "%q" (toJson .) | squote -}}
{{- end -}}

{{/* imagePullSecrets: [...] on one line, or nothing: include "farm.imagePullSecrets" (list . 8) */}}
{{- define "farm.imagePullSecrets" -}}
{{- $root := index . 0 -}}
{{- with $root.Values.image.pullSecrets }}
{{ printf "imagePullSecrets: %s" (include "farm.pullSecretList" .) | indent (index $ 1) }}
{{- end }}
{{- end -}}
{{- define "farm.pullSecretList" -}}
{{- $names := list -}}
{{- range . }}{{ $names = append $names (dict "name" .) }}{{ end -}}
{{- toJson $names -}}
{{- end -}}

{{/*
Values the schema cannot check: unique GPU group names, and every accelerator that
settings.stage_resources asks for is declared by a GPU group (else that stage could never run).
*/}}
{{- define "farm.checkValues" -}}
{{- $names := dict (.Values.ray.cpuWorkers.groupName) true -}}
{{- $accelerators := dict -}}
{{- range .Values.ray.gpuGroups -}}
{{- if hasKey $names .groupName -}}
{{- fail (printf "farm: ray.gpuGroups: the group name %q is used twice (each worker group needs its own name)" .groupName) -}}
{{- end -}}
{{- $_ := set $names .groupName true -}}
{{- $_ := set $accelerators .accelerator true -}}
{{- end -}}
{{- range $stage, $res := (.Values.settings.stage_resources | default dict) -}}
{{- if and $res.accelerator (not (hasKey $accelerators $res.accelerator)) -}}
{{- fail (printf "farm: settings.stage_resources.%s asks for accelerator %q but no ray.gpuGroups entry declares it (declared: %s)" $stage $res.accelerator (keys $accelerators | sortAlpha | join ", " | default "none")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
On a real install or upgrade (lookup reaches the cluster), fail at once when a Secret the pods
need is missing or lacks a key, instead of leaving pods in CreateContainerConfigError. Offline
rendering (helm template, lint, GitOps tools) cannot look anything up and skips the check.
Usage: include "farm.requireSecret" (list . "name" (list "key1" "key2") "how to create it")
*/}}
{{- define "farm.requireSecret" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- if lookup "v1" "ServiceAccount" $root.Release.Namespace "default" -}}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace $name -}}
{{- if not $secret -}}
{{- fail (printf "farm: the Secret %q does not exist in namespace %q: %s" $name $root.Release.Namespace (index . 3)) -}}
{{- end -}}
{{- range (index . 2) -}}
{{- if not (hasKey ($secret.data | default dict) .) -}}
{{- fail (printf "farm: the Secret %q has no key %q: %s" $name . (index $ 3)) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap with the nightly batch and its specs, mounted at /specs. */}}
{{- define "farm.nightlyConfigMap" -}}
{{- default (printf "%s-nightly-specs" (include "farm.fullname" .)) .Values.nightly.existingConfigMap -}}
{{- end -}}

{{/* ConfigMap keys cannot hold "/": the chart's own ConfigMap keys files by number and maps them back to paths. */}}
{{- define "farm.nightlyItems" -}}
{{- if not .Values.nightly.existingConfigMap -}}
items:
{{- range $i, $path := keys .Values.nightly.files | sortAlpha }}
  - key: {{ printf "file-%d" $i }}
    path: {{ $path }}
{{- end }}
{{- end -}}
{{- end -}}

{{/* The Secret holding the controller's admin credential: the one named, or the chart's. */}}
{{- define "farm.adminSecret" -}}
{{- default (printf "%s-admin" (include "farm.fullname" .)) .Values.controller.adminToken.existingSecret -}}
{{- end -}}

{{/* FARM_ADMIN_TOKEN, from its Secret only. */}}
{{- define "farm.adminTokenEnv" -}}
- name: FARM_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "farm.adminSecret" . }}
      key: {{ .Values.controller.adminToken.key }}
{{- end -}}

{{/* What a nightly submission sends the controller: the studio's token (nightly.tokenSecret), else the admin's. */}}
{{- define "farm.nightlyTokenEnv" -}}
{{- with .Values.nightly.tokenSecret }}{{ if .name -}}
- name: FARM_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: {{ .key }}
{{- else -}}
{{- include "farm.adminTokenEnv" $ -}}
{{- end }}{{ end -}}
{{- end -}}
