#!/usr/bin/env bash
# make demo: a local registry, a sample compose app and dockward, then a good
# push (deployed) and a bad one (rolled back and blocked), shown through the
# API. Everything runs on 127.0.0.1 and is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."

DOCKWARD=${DOCKWARD:-bin/dockward}
work=$(mktemp -d /tmp/dockward-demo.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
REG_PORT=$(port); API_PORT=$(port)
REG=127.0.0.1:$REG_PORT
IMAGE=$REG/demo/web
PROJECT=dockward-demo
export DOCKER_BUILDKIT=0

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$(now)" -v b="$1" 'BEGIN { printf "%.1f", a - b }'; }
pids=()
cleanup() {
  say "cleaning up"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  docker-compose -f "$work/docker-compose.yml" -p $PROJECT down -t 1 >/dev/null 2>&1 || true
  docker images --format '{{.Repository}}:{{.Tag}}' "$IMAGE" | xargs -r docker rmi -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

say "starting a registry on $REG"
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $REG, secret: demo}
YML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
until curl -fs "http://$REG/v2/" >/dev/null; do sleep 0.2; done

CGO_ENABLED=0 go build -o "$work/app" ./internal/e2e/testapp
# build VERSION MODE: an image FROM scratch whose healthcheck passes or fails.
build() {
  mkdir -p "$work/build"
  cp "$work/app" "$work/build/app"
  cat > "$work/build/Dockerfile" <<DOCKERFILE
FROM scratch
COPY app /app
ENV APP_MODE=$2
LABEL version=$1
HEALTHCHECK --interval=1s --timeout=3s --retries=2 CMD ["/app", "-check"]
ENTRYPOINT ["/app"]
DOCKERFILE
  docker build -q -t "$IMAGE:latest" "$work/build" >/dev/null
}
push() { docker push "$IMAGE:latest" | sed -n 's/.*digest: \(sha256:[0-9a-f]*\).*/\1/p'; }
running() {
  local id; id=$(docker ps -q --filter label=com.docker.compose.project=$PROJECT --filter status=running | head -1)
  [ -n "$id" ] || { echo none; return; }
  docker image inspect -f '{{range .RepoDigests}}{{.}} {{end}}' "$(docker inspect -f '{{.Image}}' "$id")" | tr ' ' '\n' | sed -n 's/.*@//p' | head -1
}

say "v1 (healthy) is pushed and running under docker compose"
build v1 healthy
V1=$(push)
cat > "$work/docker-compose.yml" <<YML
version: "2.4"
services:
  web:
    image: $IMAGE:latest
    network_mode: none
    restart: unless-stopped
YML
docker-compose -f "$work/docker-compose.yml" -p $PROJECT up -d 2>&1 | sed 's/^/  compose: /'
echo "running: $(running)"

say "starting dockward (poll every 2s, 20s grace)"
cat > "$work/config.json" <<JSON
{
  "registry": {"url": "http://$REG", "poll_interval": 2},
  "api": {"port": "$API_PORT"},
  "state_file": "$work/state.json",
  "services": [{
    "name": "web", "image": "demo/web:latest",
    "compose_file": "$work/docker-compose.yml", "compose_project": "$PROJECT",
    "auto_update": true, "auto_heal": true, "health_grace": 20, "health_poll_interval": 0.5
  }]
}
JSON
"$DOCKWARD" check -config "$work/config.json"
"$DOCKWARD" -config "$work/config.json" >"$work/dockward.log" 2>&1 &
pids+=($!)
until curl -fs "http://127.0.0.1:$API_PORT/health" >/dev/null; do sleep 0.2; done
curl -s "http://127.0.0.1:$API_PORT/health"

say "CI pushes v2 (healthy)"
build v2 healthy
V2=$(push); t0=$(now)
echo "pushed $V2"
until [ "$(running)" = "$V2" ] && docker ps --filter label=com.docker.compose.project=$PROJECT | grep -q '(healthy)'; do sleep 0.2; done
echo "v2 running and healthy $(since "$t0")s after the push"

say "CI pushes v3 (its healthcheck fails)"
build v3 unhealthy
V3=$(push); t0=$(now)
echo "pushed $V3"
until curl -s "http://127.0.0.1:$API_PORT/blocked" | grep -q "$V3"; do sleep 0.2; done
until [ "$(running)" = "$V2" ] && docker ps --filter label=com.docker.compose.project=$PROJECT | grep -q '(healthy)'; do sleep 0.2; done
echo "v3 blocked and v2 running and healthy again $(since "$t0")s after the push"

say "GET /blocked"
curl -s "http://127.0.0.1:$API_PORT/blocked"
say "a later poll leaves the blocked digest alone"
sleep 5
curl -s -X POST "http://127.0.0.1:$API_PORT/trigger/web?wait=true"
say "GET /metrics (watcher_*)"
curl -s "http://127.0.0.1:$API_PORT/metrics" | grep -E '^watcher_(updates|rollbacks|service_blocked|service_healthy|poll_count)'
say "dockward's log"
grep -vE 'level=DEBUG' "$work/dockward.log" | cut -c1-220
