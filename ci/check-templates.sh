#!/usr/bin/env bash
# Checks the delivery kit's files (no Docker engine or cluster needed):
#
#   1. YAML syntax (python3 + PyYAML, installed with pip when missing) of every file in
#      ci/templates/, local-dev/docker-compose.yml and ops/deploy/**/*.yaml
#   2. docker compose -f local-dev/docker-compose.yml config -q, when a compose plugin exists
#   3. the pipeline list of ops/deploy/base/kustomization.yaml is pipelines/*.toml, and every
#      overlay renders (kubectl kustomize or kustomize build, when one is installed)
#   4. shell syntax: docker/entrypoint.sh (POSIX sh), local-dev/scripts/*.sh,
#      local-dev/tests/*.sh and ansible/*.sh (bash); python syntax of local-dev/**/*.py and ci/*.py
#   5. the CI templates run the same commands: every command of the GitLab jobs check and test
#      (their `script`) is a `run` step of the GitHub jobs checks and test and an `sh` step of
#      ci/templates/Jenkinsfile, whose declarative structure ci/check_jenkinsfile.py checks
#      (no Jenkins linter works offline: Jenkins's own runs only when JENKINS_URL is set,
#      with JENKINS_USER and JENKINS_TOKEN, through its pipeline-model-converter/validate)
#
# Run from anywhere: ci/check-templates.sh. Exit 1 on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

failures=0
log() { echo "[ci/check-templates.sh] $*" >&2; }
fail() {
    log "FAIL: $*"
    failures=$((failures + 1))
}

# 1. YAML.
if ! python3 -c 'import yaml' 2>/dev/null; then
    log "installing PyYAML (pip)"
    python3 -m pip install --quiet --disable-pip-version-check pyyaml
fi
mapfile -t yaml_files < <(
    find ci/templates -type f \( -name '*.yml' -o -name '*.yaml' \) | sort
    echo local-dev/docker-compose.yml
    find ops/deploy -type f -name '*.yaml' | sort
)
python3 - "${yaml_files[@]}" <<'PY' || fail "YAML syntax (above)"
import sys, yaml
bad = 0
for path in sys.argv[1:]:
    try:
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            raise ValueError("no YAML document")
        print(f"  ok  {path}")
    except Exception as e:  # noqa: BLE001 - report every file
        bad += 1
        print(f"  BAD {path}: {e}", file=sys.stderr)
sys.exit(1 if bad else 0)
PY

# 2. Compose.
if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    docker compose -f local-dev/docker-compose.yml config -q || fail "docker compose config"
    log "docker compose config: ok"
else
    log "no docker compose plugin: docker compose config skipped (YAML syntax checked above)"
fi

# 3. Kustomize.
listed="$(sed -n 's#^ *- \.\./\.\./\.\./pipelines/\([^/]*\.toml\)$#\1#p' ops/deploy/base/kustomization.yaml | sort)"
present="$(cd pipelines && ls -1 -- *.toml | sort)"
if [[ "$listed" != "$present" ]]; then
    fail "ops/deploy/base/kustomization.yaml lists [$(echo $listed)] but pipelines/ has [$(echo $present)]: update its gridflow-pipelines files"
fi
render=""
if command -v kustomize >/dev/null 2>&1; then
    render="kustomize build --load-restrictor LoadRestrictionsNone"
elif command -v kubectl >/dev/null 2>&1 && kubectl kustomize --help >/dev/null 2>&1; then
    render="kubectl kustomize --load-restrictor LoadRestrictionsNone"
fi
if [[ -n "$render" ]]; then
    for overlay in ops/deploy/overlays/*/; do
        if out="$($render "$overlay" 2>&1)"; then
            python3 -c 'import sys, yaml; list(yaml.safe_load_all(sys.stdin))' <<<"$out" ||
                fail "$overlay renders invalid YAML"
            log "$render $overlay: ok ($(grep -c '^kind:' <<<"$out") objects)"
        else
            fail "$render $overlay: $out"
        fi
    done
else
    log "neither kustomize nor kubectl: overlays not rendered (YAML syntax checked above)"
fi

# 4. Scripts.
sh -n docker/entrypoint.sh || fail "docker/entrypoint.sh: sh syntax"
if command -v dash >/dev/null 2>&1; then dash -n docker/entrypoint.sh || fail "docker/entrypoint.sh: dash syntax"; fi
for f in local-dev/scripts/*.sh local-dev/tests/*.sh ansible/*.sh; do
    [[ -e "$f" ]] || continue
    bash -n "$f" || fail "$f: bash syntax"
done
while IFS= read -r f; do
    python3 -c 'import ast, sys; ast.parse(open(sys.argv[1]).read(), sys.argv[1])' "$f" || fail "$f: python syntax"
done < <(find local-dev ci -maxdepth 3 -name '*.py' -not -path '*/.state/*' -not -path 'ci/advisory-db/*')

# 5. The same commands in every CI template; the Jenkinsfile's structure.
commands="$(mktemp)"
trap 'rm -f "$commands"' EXIT
python3 - ci/templates/gitlab-ci.yml ci/templates/github-actions.yml >"$commands" <<'PY' || fail "GitLab and GitHub templates run different commands (above)"
import sys, yaml
gitlab = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
github = yaml.safe_load(open(sys.argv[2], encoding="utf-8"))
wanted = [c for job in ("check", "test") for c in gitlab[job]["script"]]
runs = {" ".join(str(s.get("run", "")).split()) for job in ("checks", "test")
        for s in github["jobs"][job]["steps"]}
missing = [c for c in wanted if " ".join(c.split()) not in runs]
for c in missing:
    print(f"  BAD {sys.argv[2]}: no run step runs: {c}", file=sys.stderr)
print("\n".join(wanted))
sys.exit(1 if missing else 0)
PY
python3 ci/check_jenkinsfile.py ci/templates/Jenkinsfile --stages check,test,image --commands "$commands" ||
    fail "ci/templates/Jenkinsfile (above)"
# The checker is not a formality: a Jenkinsfile whose test stage lost its command, or with an
# unclosed block, is refused.
broken="$(mktemp)"
sed "s#sh 'ci/test.sh'#sh 'true'#" ci/templates/Jenkinsfile >"$broken"
python3 ci/check_jenkinsfile.py "$broken" --commands "$commands" 2>/dev/null &&
    fail "check_jenkinsfile.py accepted a Jenkinsfile that does not run ci/test.sh"
sed '$d' ci/templates/Jenkinsfile >"$broken"
python3 ci/check_jenkinsfile.py "$broken" 2>/dev/null &&
    fail "check_jenkinsfile.py accepted a Jenkinsfile with an unclosed block"
rm -f "$broken"
if [[ -n "${JENKINS_URL:-}" ]]; then
    answer="$(curl -sS --max-time 30 ${JENKINS_USER:+-u "$JENKINS_USER:${JENKINS_TOKEN:-}"} \
        -F "jenkinsfile=<ci/templates/Jenkinsfile" "${JENKINS_URL%/}/pipeline-model-converter/validate" 2>&1)" || true
    if grep -q 'successfully validated' <<<"$answer"; then
        log "Jenkins declarative linter ($JENKINS_URL): ok"
    else
        fail "Jenkins declarative linter ($JENKINS_URL): $answer"
    fi
else
    log "no JENKINS_URL: Jenkins's own declarative linter skipped (structure checked above)"
fi

if ((failures)); then
    log "$failures failure(s)"
    exit 1
fi
log "all checks passed"
