# shellcheck shell=bash
# The `step` of the GPU-machine scripts (tools/gpu_checks*.sh), sourced by them: run one check
# with a time limit, its output in $OUT/NAME.log; print and record (in `summary`) its exit status
# and seconds, the last lines of its log when it failed; `status` becomes 1 on any failure.
status=0
summary=()
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  summary+=("$name: exit $rc in $((SECONDS - t0)) s")
  echo "$name: exit $rc in $((SECONDS - t0)) s"
  [ $rc -eq 0 ] || { tail -5 "$OUT/$name.log"; status=1; }
}
