# Shared by hack/node/{up,down} and hack/cluster/{up,down}: the one real node a machine can run
# beside the simulated ones (kubelet + kube-proxy + containerd + runc, a bridge CNI, CoreDNS).
# Every name and path it creates on the host is listed here, so hack/node/down removes exactly
# those and nothing else. Source it after hack/cluster/lib.sh.

REAL_NODE=${MODELFLEET_REAL_NODE_NAME:-realnode}   # the Node object's name
NODE_BRIDGE=mfnode0                                 # created before the cluster (cert SAN)
NODE_POD_CIDR=10.200.0.0/24                         # podman uses 10.88/16, kwok nodes 10.244/16
NODE_IP=10.200.0.1                                  # bridge address = node IP = apiserver advertise
SERVICE_CIDR=10.0.0.0/24                            # kube-apiserver's default, made explicit
KUBERNETES_SVC_IP=10.0.0.1
NODE_RUN=/run/modelfleet-node                       # containerd state, pids, configs, certs, logs
NODE_LIB=/var/lib/modelfleet-node                   # kubelet root, CNI IPAM, pod logs
# containerd's root (its image store) is a cache like the binary cache: kept by hack/node/down
# so a warm start does not re-import GBs of images (hack/node/down --purge removes it).
NODE_IMAGES="${MODELFLEET_CACHE}/node/containerd"
CTRD_SOCK=${NODE_RUN}/containerd/containerd.sock
NODE_OWNER=${NODE_RUN}/cluster                      # the cluster the node belongs to
PAUSE_IMAGE=localhost/modelfleet/pause:3.10
# sysctls the kubelet and kube-proxy set; recorded at node start, restored at node stop.
NODE_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait
  net.netfilter.nf_conntrack_tcp_be_liberal)

node_owner() { cat "${NODE_OWNER}" 2>/dev/null || true; }
node_pid_alive() { local f=${NODE_RUN}/$1.pid; [[ -f $f ]] && kill -0 "$(cat "$f")" 2>/dev/null; }
