# Shared by hack/cluster/{build,up,down}: where the binary cache and clusters live.
# Source it; it defines variables and small helpers only.

CLUSTER_HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${CLUSTER_HACK_DIR}/versions.env"
# The real node's DNS. Not in versions.env on purpose: that file keys the whole binary cache,
# and CoreDNS's own stamp file (.coredns.version) already rebuilds it alone when this changes.
COREDNS_VERSION=v1.15.0

# Never let Go switch toolchains behind our back: the cache key includes the local Go version.
export GOTOOLCHAIN=local
export GOFLAGS="${GOFLAGS:--buildvcs=false}"

MODELFLEET_CACHE="${MODELFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/modelfleet}"
# Bump when the build recipe changes in a way that changes the binaries (flags, stamping).
CLUSTER_RECIPE_REV=1

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { printf '[cluster] ERROR: %s\n' "$*" >&2; exit 1; }

# Lines naming karpenter are not hashed: karpenter-kwok's stamp file rebuilds it alone (versions.env).
cluster_cache_key() {
  local go_version
  command -v go >/dev/null 2>&1 || die "go is not on PATH; install Go >= 1.26 (needed to build the cluster binaries)"
  go_version="$(go env GOVERSION GOOS GOARCH | tr '\n' ' ')"
  local digest
  digest="$( { grep -vi karpenter "${CLUSTER_HACK_DIR}/versions.env"; echo "${go_version}"; echo "rev=${CLUSTER_RECIPE_REV}"; } \
    | sha256sum | cut -c1-12)"
  echo "k8s-${KUBERNETES_VERSION}-${digest}"
}

# The directory holding bin/ for the pinned versions.
cluster_build_dir() { echo "${MODELFLEET_CACHE}/cluster/$(cluster_cache_key)"; }
cluster_bin_dir() { echo "$(cluster_build_dir)/bin"; }

# Everything a named cluster owns (kubeconfig, kwokctl config) lives here; the kwok work
# dir (etcd data, logs) lives on /dev/shm when it exists, for speed.
cluster_state_dir() { echo "${MODELFLEET_CACHE}/clusters/$1"; }
cluster_kubeconfig() { echo "$(cluster_state_dir "$1")/kubeconfig"; }
cluster_workdir_root() {
  if [[ -n "${MODELFLEET_KWOK_WORKDIR:-}" ]]; then
    echo "${MODELFLEET_KWOK_WORKDIR}"
  elif [[ -d /dev/shm && -w /dev/shm ]]; then
    echo "/dev/shm/modelfleet-kwok"
  else
    echo "${MODELFLEET_CACHE}/kwok"
  fi
}

# Whether kwokctl (on PATH, KWOK_WORKDIR set) knows cluster $1. Not a pipe into grep -q: under
# pipefail a SIGPIPE after the match would read as "absent".
cluster_exists() {
  local all
  all="$(kwokctl get clusters 2>/dev/null || true)"
  grep -qx "$1" <<<"${all}"
}
