{{/* Names and labels shared by every template. */}}

{{- define "kernel-warmup.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kernel-warmup.fullname" -}}
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

{{- define "kernel-warmup.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kernel-warmup.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kernel-warmup.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "kernel-warmup.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "kernel-warmup.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kernel-warmup.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kernel-warmup.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The image of the bootstrap init container: the operator's own unless set. */}}
{{- define "kernel-warmup.bootstrapImage" -}}
{{- default (include "kernel-warmup.image" .) .Values.warmer.bootstrapImage }}
{{- end }}

{{/*
The rules the operator needs on namespaced resources, in either scope. Each one names
the code that uses it:
- kernelwarmups list/watch: kopf's watch and index; patch: kopf's finalizer and
  progress annotations. No get: neither kopf nor kube.py reads one KernelWarmup.
- kernelwarmups/status patch: kube.Kube.patch_cr_status.
- deployments, statefulsets, leaderworkersets: list/watch (kopf indexes and event
  handlers), get (kube.Kube.get_workload, the fresh read before each write), patch
  (kube.Kube.apply, server-side apply).
- pods list/watch: the warmup index reads init-container termination messages.
- events create: kopf.event (the operator's and kopf's own Events); kopf only POSTs.
- jobs list/watch (the prewarm Job watch, and kube_prewarm list_jobs: a target's Jobs by
  label), create (create_job), delete (delete_job: superseded Jobs, a deleted
  KernelWarmup's Jobs). No get, update or patch: Jobs are never changed in place.
- persistentvolumeclaims get: kube_prewarm get_pvc (is a PVC cache shared across nodes?).
*/}}
{{/*
The workload kinds the operator injects into, by API group: the chart's one list (the RBAC
rules and the webhook's rules range over it). It is warmup_operator/core/kinds.py's KINDS;
tests/integration/test_chart.py fails when the two disagree.
*/}}
{{- define "kernel-warmup.workloadKinds" -}}
- {group: apps, version: v1, resources: [deployments, statefulsets]}
- {group: leaderworkerset.x-k8s.io, version: v1, resources: [leaderworkersets]}
{{- end }}

{{- define "kernel-warmup.namespacedRules" -}}
- apiGroups: ["kernelwarmup.dev"]
  resources: ["kernelwarmups"]
  verbs: ["list", "watch", "patch"]
- apiGroups: ["kernelwarmup.dev"]
  resources: ["kernelwarmups/status"]
  verbs: ["patch"]
{{- range (include "kernel-warmup.workloadKinds" . | fromYamlArray) }}
- apiGroups: [{{ .group | quote }}]
  resources: {{ .resources | toJson }}
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apps"]
  resources: ["replicasets"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
{{- end }}

{{/*
Cluster-scoped reads, granted in either scope:
- customresourcedefinitions list/watch: kopf notices CRDs appearing (a LeaderWorkerSet
  CRD installed after the operator); get on the LeaderWorkerSet CRD only: the operator
  checks that its pod-template lists are keyed before it server-side applies into one.
- namespaces get: a KernelWarmup asking for a hostPath cache is refused, with a status
  entry, where the namespace's Pod Security level refuses hostPath (core/trust.py).
- nodes list: kube_prewarm list_nodes, the nodes spec.prewarm.nodes.selector matches.
*/}}
{{- define "kernel-warmup.clusterReadRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  resourceNames: ["leaderworkersets.leaderworkerset.x-k8s.io"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list"]
{{- end }}

{{/* Replicas on different nodes: preferred ("soft") or required ("hard"). */}}
{{- define "kernel-warmup.podAntiAffinity" -}}
podAntiAffinity:
  {{- if eq .Values.podAntiAffinity "hard" }}
  requiredDuringSchedulingIgnoredDuringExecution:
    - topologyKey: kubernetes.io/hostname
      labelSelector:
        matchLabels:
          {{- include "kernel-warmup.selectorLabels" . | nindent 10 }}
  {{- else }}
  preferredDuringSchedulingIgnoredDuringExecution:
    - weight: 100
      podAffinityTerm:
        topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "kernel-warmup.selectorLabels" . | nindent 12 }}
  {{- end }}
{{- end }}

{{/*
The names the API server calls the webhook Service by (its certificate's names).
*/}}
{{- define "kernel-warmup.webhookHosts" -}}
{{- $svc := printf "%s-webhook" (include "kernel-warmup.fullname" .) }}
- {{ $svc }}
- {{ $svc }}.{{ .Release.Namespace }}
- {{ $svc }}.{{ .Release.Namespace }}.svc
- {{ $svc }}.{{ .Release.Namespace }}.svc.cluster.local
{{- end }}
