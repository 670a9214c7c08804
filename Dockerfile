# The project's own image: the `confluence` command, i.e. the publish job (`finish-chunk`),
# `sync`, and the reference implementation of every module (`module NAME`).
#
# Build and push to ECR (needs a Docker daemon; the tests never build it):
#   REGION=us-west-2 REGISTRY=123456789012.dkr.ecr.us-west-2.amazonaws.com
#   aws ecr create-repository --repository-name confluence --region $REGION   # once
#   aws ecr get-login-password --region $REGION \
#     | docker login --username AWS --password-stdin $REGISTRY
#   docker build --platform linux/amd64 --build-arg REVISION=$(git rev-parse HEAD) \
#     -t $REGISTRY/confluence:latest .
#   docker push $REGISTRY/confluence:latest
# then set image_registry: "$REGISTRY/" in the configuration (aws.project_image defaults to
# confluence:latest) and render the template again (confluence infra template).
#
# Every module on this image: set aws.project_image_for_modules: true and render again. The
# modules' job definitions then name this image and set CONFLUENCE_MODULE=<name>, and the
# entrypoint runs `confluence module <name> <the job's command>`: Batch cannot give a job
# definition its own entrypoint, and the controller replaces the command of every job it
# submits, so the module's name cannot travel in the command. Without CONFLUENCE_MODULE the
# entrypoint is plain `confluence`: `finish-chunk SPEC`, `sync SRC DST`, `module NAME ...`.
FROM python:3.11-slim

ARG REVISION=unknown
LABEL org.opencontainers.image.title="confluence" \
      org.opencontainers.image.source="SWOT Confluence on Snakemake" \
      org.opencontainers.image.revision="${REVISION}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/confluence
COPY pyproject.toml README.md ./
COPY src ./src
# The wheels of numpy, scipy and netCDF4 need no compiler; the sources go once installed.
RUN pip install . && cd / && rm -rf /opt/confluence

# Root on purpose: the EFS access points' folders belong to root, and the job roles may act
# as root on them (ClientRootAccess), through their own access points only.
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "confluence.infra.entrypoint"]
