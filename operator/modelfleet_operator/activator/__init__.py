"""The scale-to-zero activator: ``modelfleet-activator``, a process of its own.

While a ModelDeployment has no ready replica, the operator points its Service at the activator
with one EndpointSlice (named as the ModelDeployment, ``endpointslice.kubernetes.io/managed-by:
activator.modelfleet.io``) whose port stands for that ModelDeployment alone. The activator
listens on that port, holds each request there (up to the slice's cap and deadline) and,
once the Service's own slices list a ready replica, proxies it there. Its
``modelfleet_activator_held_requests`` gauge is the demand the operator's autoscaler reads to
scale 0 -> 1.

Layout (pure pieces first, no I/O):

- ``routes``: the routing table from EndpointSlice dicts (malformed slices named in
  ``Table.problems``, never an exception);
- ``admission``: hold/cap bookkeeping and the choice of backend (least in flight, then
  round robin);
- ``headers``: what is forwarded (RFC 9110 hop-by-hop headers dropped, Via/X-Forwarded-*);
- ``metrics``: its own prometheus_client registry;
- ``proxy``: one request: hold, admit, proxy, answer;
- ``server``: the listeners (one per slice port), the own /metrics /healthz /readyz server,
  the SIGTERM drain;
- ``source``: where slices come from: the API (list + watch) or a file (dev/test only);
- ``__main__``: the command line.

The activator never writes to the API. RBAC it needs: ``list`` and ``watch`` on
``discovery.k8s.io`` ``endpointslices`` (a ClusterRole; a Role in that namespace with
``--namespace``).
"""
