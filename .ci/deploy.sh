#!/bin/sh
# Tag deploy of TRD 9.2.1, made safe: check the release tag out on the production host, rebuild and
# re-create the stack, wait until the daemon's container is healthy, and when it is not, bring the
# previous release back and fail the job.
#
# Called by the deploy_production job of .gitlab-ci.yml (an ssh-agent already holds
# $CNT_SYNC_DB_PROD_KEY). POSIX sh: the job runs on alpine. Variables (CI/CD settings):
#   CNT_SYNC_DB_PROD        production host (required)
#   CI_COMMIT_TAG           the release tag, vX.Y[.Z...] (set by GitLab)
#   DEPLOY_SSH_PORT         ssh port (default 2024)
#   DEPLOY_SSH_USER         ssh user (default gitlab)
#   DEPLOY_PATH             checkout with docker-compose.yml and the host's own .env (and table
#                           list, HOST_TABLES_FILE) (default /docker/etl/sync-db-zains)
#   DEPLOY_HEALTH_TIMEOUT   seconds to wait for a healthy container (default 300)
set -eu

host=${CNT_SYNC_DB_PROD:?set CNT_SYNC_DB_PROD (production host) in the CI/CD variables}
tag=${CI_COMMIT_TAG:?CI_COMMIT_TAG is not set: deploys run for release tags only}
port=${DEPLOY_SSH_PORT:-2024}
user=${DEPLOY_SSH_USER:-gitlab}
path=${DEPLOY_PATH:-/docker/etl/sync-db-zains}
health_timeout=${DEPLOY_HEALTH_TIMEOUT:-300}

if ! printf '%s\n' "$tag" | grep -Eq '^v([0-9]+\.)+[0-9]+$'; then
    echo "deploy: tag '$tag' is not a release tag (vX.Y.Z)" >&2
    exit 1
fi
case $path in
    *"'"*) echo "deploy: DEPLOY_PATH must not contain a single quote" >&2; exit 1 ;;
esac

# One command on the production host, inside the deploy checkout.
remote() {
    ssh -p "$port" "$user@$host" "cd '$path' && $1"
}

# (Re)create the stack and wait until every started container is running and healthy.
up() {
    remote "docker compose up -d --build --force-recreate --wait --wait-timeout $health_timeout"
}

# What runs now: the checked-out release tag, else the commit (the first deploy of a host).
previous=$(remote "git describe --tags --exact-match HEAD 2>/dev/null || git rev-parse --verify HEAD")
echo "deploy: $user@$host:$port $path: $previous -> $tag"

remote "git fetch --tags --force"
# No --force (as in TRD 9.2.1): a file edited on the host that the release changes stops the
# deploy here, before anything restarted, instead of being overwritten.
remote "git checkout '$tag'"
if up; then
    remote "docker compose ps"
    echo "deploy: $tag is up and healthy"
    exit 0
fi

echo "deploy: $tag did not become healthy within ${health_timeout}s; rolling back to $previous" >&2
remote "docker compose logs --tail 100 dlt_pipeline" >&2 || true
remote "git checkout '$previous'"
if up; then
    echo "deploy: rolled back to $previous (healthy); the job fails because $tag did not start" >&2
else
    echo "deploy: rollback to $previous did not become healthy either: the host needs attention" >&2
fi
exit 1
