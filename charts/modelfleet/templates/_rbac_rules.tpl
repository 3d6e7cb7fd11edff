{{/* Cluster-scoped reads: needed in both scopes. */}}
{{- define "modelfleet.rules.cluster" -}}
# kopf: discovers and watches CRDs to find the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf: lists and watches namespaces when started with --namespace.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
# operator: free GPU capacity per node decides the rollout strategy and explains Pending pods.
- apiGroups: [""]
  resources: ["nodes"]
  verbs: ["get", "list", "watch"]
{{- end }}

{{/* Namespaced rules: in the ClusterRole (cluster scope) or a Role per watched namespace. */}}
{{- define "modelfleet.rules.namespaced" -}}
# kopf + operator: watch ModelDeployments; kopf patches its finalizer and progress annotations.
- apiGroups: ["modelfleet.io"]
  resources: ["modeldeployments"]
  verbs: ["get", "list", "watch", "patch"]
# operator: writes status through the status subresource.
- apiGroups: ["modelfleet.io"]
  resources: ["modeldeployments/status"]
  verbs: ["get", "patch"]
# operator: children, written with server-side apply (patch) and pruned (delete).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# operator: reads Pending pods to explain why they do not schedule.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# operator: checks that a pvc:// model's claim exists.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get"]
# kopf + operator: post Events on ModelDeployments.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
