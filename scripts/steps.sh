# Step runner for scripts/check.sh (sourced): every step runs even when an earlier one failed;
# `finish_steps` prints one line per step and returns non-zero if any step failed.
SUMMARY=()
FAILED=0

step() {  # step "what" command args...: run it, time it, remember how it ended
  local what=$1; shift
  echo "== $what"
  local start=$SECONDS rc=0
  "$@" || rc=$?
  local took=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then
    SUMMARY+=("ok      ${took}s  $what")
  else
    SUMMARY+=("FAILED  ${took}s  $what (exit $rc)")
    FAILED=1
  fi
  return 0
}

finish_steps() {
  echo "== summary (${SECONDS}s in all)"
  printf '   %s\n' "${SUMMARY[@]}"
  if [ "$FAILED" -ne 0 ]; then
    echo "== some checks FAILED" >&2
    return 1
  fi
  echo "== all checks passed"
}
