{{- /*
Every verb here is one that kopf or the operator really calls (operator/modelfleet_operator:
kube.py makes every API call, handlers.py says what kopf watches); nothing more. When the
operator starts calling something new, add it here: tests/integration/test_helm_rbac.py runs the
operator as this ServiceAccount and fails on any "forbidden".
*/ -}}

{{/* Cluster-wide reads: in the ClusterRole in both scopes. */}}
{{- define "modelfleet.rules.cluster" -}}
# kopf: lists and watches CRDs to notice the resources it serves appear or change.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
# operator: watches nodes for GPU capacity (rollout strategy, GPUProductUnavailable).
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["list", "watch"]
{{- if eq .Values.operator.scope "namespace" }}
# kopf: lists and watches namespaces when started with --namespace (not --all-namespaces).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* Namespaced rules: in the ClusterRole (cluster scope) or a Role per watched namespace. */}}
{{- define "modelfleet.rules.namespaced" -}}
# kopf: watches ModelDeployments (the operator reads them from that watch only; kopf
# writes nothing to them: index and event handlers keep no progress).
- apiGroups: ["modelfleet.io"]
  resources: ["modeldeployments"]
  verbs: ["list", "watch"]
# operator: writes status and conditions through the status subresource.
- apiGroups: ["modelfleet.io"]
  resources: ["modeldeployments/status"]
  verbs: ["patch"]
# operator: the builtin autoscaler (spec.autoscaling.engine builtin) sets spec.replicas
# through the scale subresource, as an HPA would; it may not patch the rest of the spec.
- apiGroups: ["modelfleet.io"]
  resources: ["modeldeployments/scale"]
  verbs: ["patch"]
# operator: children's ownerReferences set blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin (e.g. OpenShift) only allow to
# whoever may update the owner's finalizers.
- apiGroups: ["modelfleet.io"]
  resources: ["modeldeployments/finalizers"]
  verbs: ["update"]
# operator: server-side apply (patch, and create when the child is new; a JSON patch puts
# back a hand-edited list), prune (delete); kopf: watches children (what the operator
# compares with, so a hand edit is put back at once).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# engine keda: the ScaledObject (watched only where KEDA's CRD is installed).
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# operator: scale to zero: the activator's EndpointSlice of each scaled-to-zero Service
# (server-side apply, prune) and a watch of the activator Service's own slices (its pods).
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# operator: watches pods (why Pending, crash messages, GPUs in use on each node).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
{{- if .Values.apiKeys.readSecrets }}
# operator (apiKeys.readSecrets): spec.auth: lists and watches the Secrets labelled
# modelfleet.io/api-keys=true (key ids are kept, never the hashes), only in namespaces where
# a ModelDeployment names one; get: a named Secret without the label (missing or
# unlabelled?). patch pods: one annotation of a running serving pod when its Secret changed,
# so the kubelet rewrites the mounted Secret within seconds.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["patch"]
{{- end }}
# operator: watches claims (a pvc:// model's claim missing or not bound).
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch"]
# operator and kopf: Events on ModelDeployments (kopf only posts, never updates); list: a
# node autoscaler's Events on pending serving pods (TriggeredScaleUp, Nominated, ...), read
# only while a pod waits for a node.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "list"]
{{- end }}
