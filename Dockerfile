# syntax=docker/dockerfile:1
# The seven Manycore-Mail images from one file. Pick the image with --target; the build context
# is the repository root, since every image needs common/ beside its module:
#   docker build --target receiver -t manycore-mail/receiver:0.1.0 .
# Targets (= image names): redis backdata mxserver postfixlog transformer receiver httpreceiver.
# Stages: build (venv + common, shared) -> build-<target> (+ the module); runtime (user, env,
# labels, shared) -> <target> (the module's venv, ports, entrypoint). Only the virtualenv goes
# from a build stage to an image, so each image holds common and its own module, nothing else.

# The one base of every stage: a full version, never a moving tag (also the base.name label).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ================================================================ build stages
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# setuptools pinned (requirements-dev.txt) and used without build isolation, so that building
# the local packages downloads nothing unpinned.
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir setuptools==84.2.1
COPY requirements.txt constraints.txt /src/
COPY common/pyproject.toml /src/common/
COPY common/manycore_common /src/common/manycore_common
# Both pin files are constraints: they fix the version of whatever gets installed without
# installing the other services' dependencies. They stay in force for the module's install
# below (PIP_CONSTRAINT), which finds manycore-common already here.
ENV PIP_CONSTRAINT="/src/requirements.txt /src/constraints.txt"
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/common

FROM build AS build-redis
COPY Redis/pyproject.toml /src/Redis/
COPY Redis/manycore_redis /src/Redis/manycore_redis
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/Redis

FROM build AS build-backdata
COPY BackData/pyproject.toml /src/BackData/
COPY BackData/manycore_backdata /src/BackData/manycore_backdata
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/BackData

FROM build AS build-mxserver
COPY MxServer/pyproject.toml /src/MxServer/
COPY MxServer/manycore_mxserver /src/MxServer/manycore_mxserver
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/MxServer

FROM build AS build-postfixlog
COPY PostfixLog/pyproject.toml /src/PostfixLog/
COPY PostfixLog/manycore_postfixlog /src/PostfixLog/manycore_postfixlog
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/PostfixLog

FROM build AS build-transformer
COPY Transformer/pyproject.toml /src/Transformer/
COPY Transformer/manycore_transformer /src/Transformer/manycore_transformer
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/Transformer

FROM build AS build-receiver
COPY Receiver/pyproject.toml /src/Receiver/
COPY Receiver/manycore_receiver /src/Receiver/manycore_receiver
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/Receiver

FROM build AS build-httpreceiver
COPY HttpReceiver/pyproject.toml /src/HttpReceiver/
COPY HttpReceiver/manycore_httpreceiver /src/HttpReceiver/manycore_httpreceiver
RUN /opt/venv/bin/pip install --no-cache-dir --no-build-isolation /src/HttpReceiver

# ================================================================ runtime base
FROM ${PYTHON_IMAGE} AS runtime
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.vendor="Manycore-Mail" \
      org.opencontainers.image.base.name="docker.io/library/${PYTHON_IMAGE}"
# A fixed numeric user, so that runAsNonRoot can be checked by the kubelet and fsGroup
# matches across images.
RUN groupadd --system --gid 10001 manycore \
    && useradd --system --no-log-init --uid 10001 --gid 10001 \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin manycore
# No .pyc writes at run time (the root filesystem is read-only in the pod); logs unbuffered.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001

# ================================================================ images (--target)
# manycore-redis: runs Debian's redis-server as a durable queue store and exports the queue
# gauges. The data directory is /data (a PersistentVolumeClaim in deploy/).
FROM runtime AS redis
LABEL org.opencontainers.image.title="manycore-redis" \
      org.opencontainers.image.description="Manycore-Mail Redis pod: redis-server as a durable queue store, S3 backups, queue metrics"
# redis-server from Debian (manycore-redis starts it as its child), pinned: bump the version
# with Debian's security updates (apt-cache policy redis-server on bookworm). Its init script
# is never used (manycore-redis is the container's only process tree); /data belongs to the
# user the process runs as. Root only to install; the image runs as 10001 again below.
USER 0:0
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server=5:7.0.15-1~deb12u10 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o 10001 -g 10001 -m 0750 /data
COPY --from=build-redis /opt/venv /opt/venv
USER 10001:10001
EXPOSE 6379 9090
ENTRYPOINT ["/opt/venv/bin/manycore-redis"]

# manycore-backdata: events from Redis to the customer's webhook.
FROM runtime AS backdata
LABEL org.opencontainers.image.title="manycore-backdata" \
      org.opencontainers.image.description="Manycore-Mail BackData: events from Redis to the customer's webhook"
COPY --from=build-backdata /opt/venv /opt/venv
EXPOSE 9090
ENTRYPOINT ["/opt/venv/bin/manycore-backdata"]

# manycore-mxserver: the MX of the return-path domains (bounces, unsubscribes, spam reports).
FROM runtime AS mxserver
LABEL org.opencontainers.image.title="manycore-mxserver" \
      org.opencontainers.image.description="Manycore-Mail MxServer: the MX of the return-path domains, bounces and reports into events"
COPY --from=build-mxserver /opt/venv /opt/venv
EXPOSE 25 9090
ENTRYPOINT ["/opt/venv/bin/manycore-mxserver"]

# manycore-postfixlog: feeds a private Postfix (Debian's package) from the to-postfix queue and
# turns its log into events. Runs as root: Postfix's master needs it. The pod takes every
# capability away but the few Postfix needs (PostfixLog/pod.yaml, deploy/README.md).
FROM runtime AS postfixlog
LABEL org.opencontainers.image.title="manycore-postfixlog" \
      org.opencontainers.image.description="Manycore-Mail PostfixLog: a private Postfix fed from Redis, its log turned into events"
# Root, on purpose and to the end: Postfix's master must start as root and switch to the
# postfix user for its daemons. PostfixLog/pod.yaml drops every capability but CHOWN,
# DAC_OVERRIDE, FOWNER, KILL, SETGID and SETUID, and forbids privilege escalation.
# hadolint ignore=DL3002
USER 0:0
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Postfix from Debian, pinned: bump the version with Debian's updates (apt-cache policy postfix
# on bookworm). "No configuration" keeps the package from writing a system main.cf:
# manycore-postfixlog renders its own instance under postfixlog.postfix-directory and runs
# master itself; the system instance is never started. libsasl2-modules: the SMTP client's
# SASL mechanisms, for a relayhost that wants a login (deploy/components/relayhost).
RUN echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postfix=3.7.11-0+deb12u1 \
        libsasl2-modules=2.1.28+dfsg-10+deb12u1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-postfixlog /opt/venv /opt/venv
EXPOSE 9090
ENTRYPOINT ["/opt/venv/bin/manycore-postfixlog"]

# manycore-transformer: headers, DKIM signing, hand-over to PostfixLog.
FROM runtime AS transformer
LABEL org.opencontainers.image.title="manycore-transformer" \
      org.opencontainers.image.description="Manycore-Mail Transformer: headers, DKIM signing, hand-over to PostfixLog"
COPY --from=build-transformer /opt/venv /opt/venv
EXPOSE 9090
ENTRYPOINT ["/opt/venv/bin/manycore-transformer"]

# manycore-receiver: SMTP submission (STARTTLS + AUTH) into the Redis queues.
FROM runtime AS receiver
LABEL org.opencontainers.image.title="manycore-receiver" \
      org.opencontainers.image.description="Manycore-Mail Receiver: SMTP submission (STARTTLS + AUTH) into the Redis queues"
COPY --from=build-receiver /opt/venv /opt/venv
EXPOSE 587 9090
ENTRYPOINT ["/opt/venv/bin/manycore-receiver"]

# manycore-httpreceiver: HTTP POST /v1/mail/send into the Redis queues (behind a TLS ingress).
FROM runtime AS httpreceiver
LABEL org.opencontainers.image.title="manycore-httpreceiver" \
      org.opencontainers.image.description="Manycore-Mail HttpReceiver: messages as HTTP POSTs into the Redis queues"
COPY --from=build-httpreceiver /opt/venv /opt/venv
EXPOSE 8080 9090
ENTRYPOINT ["/opt/venv/bin/manycore-httpreceiver"]
