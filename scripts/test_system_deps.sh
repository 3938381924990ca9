#!/usr/bin/env bash
# System programs two tests need, from Debian, installed when missing and when we can:
# a PostgreSQL server (the tuning test starts one on 127.0.0.1) and Chromium (the app test
# drives the Streamlit page in a real browser), and a C++ compiler (torch.compile's CPU
# backend, inductor, builds its kernels with one: the compile tests). Without root or apt the tests say why they
# skip (make test prints every skip with its reason).
set -uo pipefail
need=()
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  need+=(postgresql)
fi
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v g++ >/dev/null 2>&1 || need+=(g++)
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing ${need[*]} for the tests that need them"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "could not install ${need[*]}; the tests that need them will skip with the reason"
else
  echo "not installing ${need[*]} (needs root and apt-get); the tests that need them will skip with the reason"
fi
exit 0
