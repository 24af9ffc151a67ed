#!/usr/bin/env bash
# install.sh - installs Ferry's binaries, systemd units and example configs on this host
# (deploy/README.md). Run from a source tree after building (meson setup build && ninja -C
# build). Existing configs in /etc/ferry are never overwritten: the new example goes beside
# them as NAME.conf.example.
#
#   --prefix DIR     binaries go to DIR/bin (default /usr/local); the units' ExecStart follow
#   --build DIR      meson build folder holding the binaries (default build)
#   --destdir DIR    stage everything under DIR (packaging, tests): no user is created, no
#                    ownership changed, systemd is not told
#   --gen-secrets    create /etc/ferry/cluster.secret and /etc/ferry/admin.token (random,
#                    mode 0600, owned by the ferry user) where missing. On the coordinator's
#                    host only: copy cluster.secret to every worker host.
#   --dry-run        print what would be done, change nothing
set -euo pipefail

prefix=/usr/local
build=build
destdir=
dry=0
gen=0
src=$(cd "$(dirname "$0")/.." && pwd)

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift 2 ;;
    --prefix=*) prefix=${1#*=}; shift ;;
    --build) build=${2:?--build needs a directory}; shift 2 ;;
    --build=*) build=${1#*=}; shift ;;
    --destdir) destdir=${2:?--destdir needs a directory}; shift 2 ;;
    --destdir=*) destdir=${1#*=}; shift ;;
    --gen-secrets) gen=1; shift ;;
    --dry-run|-n) dry=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
done
case $prefix in /*) ;; *) echo "install.sh: --prefix must be absolute: $prefix" >&2; exit 2 ;; esac
case $build in /*) ;; *) build=$src/$build ;; esac

# Every change goes through run(), so that --dry-run shows exactly what would happen.
run() {
  echo "+ $*"
  [ "$dry" = 1 ] || "$@"
}

bindir=$prefix/bin
etc=/etc/ferry
unitdir=/etc/systemd/system
docdir=$prefix/share/doc/ferry

# The binaries first: nothing is installed from a half-built tree.
declare -A bins=(
  [ferry-coordinator]=coordinator/ferry-coordinator
  [ferry-worker]=worker/ferry-worker
  [ferryctl]=ctl/ferryctl
)
for b in "${!bins[@]}"; do
  if [ ! -x "$build/${bins[$b]}" ]; then
    echo "install.sh: $build/${bins[$b]} is missing: build first (meson setup build && ninja -C build)" >&2
    exit 1
  fi
done

run install -d -m 0755 "$destdir$bindir" "$destdir$etc" "$destdir$unitdir" "$destdir$docdir"
for b in ferry-coordinator ferry-worker ferryctl; do
  run install -m 0755 "$build/${bins[$b]}" "$destdir$bindir/$b"
done
# The GPU module, where the build has one (CUDA found): ferry-worker loads it from
# ../lib/ferry/ beside its binary for [compute] device = cuda:N.
if [ -f "$build/moe/libferry-gpu.so" ]; then
  run install -d -m 0755 "$destdir$prefix/lib/ferry"
  run install -m 0755 "$build/moe/libferry-gpu.so" "$destdir$prefix/lib/ferry/libferry-gpu.so"
fi

for u in ferry-coordinator.service ferry-worker@.service; do
  echo "+ sed 's#/usr/local/#$prefix/#g' deploy/systemd/$u > $destdir$unitdir/$u"
  if [ "$dry" != 1 ]; then
    sed "s#/usr/local/#$prefix/#g" "$src/deploy/systemd/$u" > "$destdir$unitdir/$u.tmp"
    chmod 0644 "$destdir$unitdir/$u.tmp"
    mv -f "$destdir$unitdir/$u.tmp" "$destdir$unitdir/$u"
  fi
done
run install -m 0644 "$src/deploy/README.md" "$destdir$docdir/README.md"

for c in coordinator worker; do
  dst=$destdir$etc/$c.conf
  if [ -e "$dst" ]; then
    echo "install.sh: keeping $etc/$c.conf; the current example is $etc/$c.conf.example"
    run install -m 0644 "$src/deploy/$c.conf" "$dst.example"
  else
    run install -m 0644 "$src/deploy/$c.conf" "$dst"
  fi
done

# The daemons run as an unprivileged system user that owns the secrets.
have_user=0
if [ -z "$destdir" ]; then
  if getent passwd ferry >/dev/null; then
    have_user=1
  elif command -v useradd >/dev/null; then
    run useradd --system --user-group --home-dir /var/lib/ferry --no-create-home \
      --shell /usr/sbin/nologin --comment "Ferry inference" ferry
    have_user=1
  else
    echo "install.sh: no useradd here: create a 'ferry' system user by hand" >&2
  fi
fi

if [ "$gen" = 1 ]; then
  for s in cluster.secret admin.token; do
    dst=$destdir$etc/$s
    if [ -e "$dst" ]; then
      echo "install.sh: keeping $etc/$s"
      continue
    fi
    echo "+ (umask 077; openssl rand -hex 32 > $dst)"
    if [ "$dry" != 1 ]; then
      (umask 077; openssl rand -hex 32 > "$dst")
    fi
    if [ "$have_user" = 1 ]; then
      run chown ferry:ferry "$dst"
    fi
  done
fi

if [ -z "$destdir" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
fi

cat <<EOF
Installed. Next steps (deploy/README.md):
  - edit $etc/coordinator.conf; for each worker: cp $etc/worker.conf $etc/worker-NAME.conf
  - the cluster secret: $etc/cluster.secret, mode 0600, the same file on every host
  - systemctl enable --now ferry-coordinator ferry-worker@NAME
EOF
