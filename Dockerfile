# One image for every flexnpu component; the chart picks the command (deviceplugin, daemon, extender, operator).
#   docker build -t ghcr.io/flexnpu/flexnpu:0.1.0 .
#   docker buildx build --platform linux/arm64,linux/amd64 ...   (910B servers are usually arm64)

FROM python:3.11-slim AS build
# The wheel carries the native interposer libflexnpu.so, which the install builds with the C compiler.
RUN apt-get update && apt-get install -y --no-install-recommends gcc make libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# The project builds from its own files only (.dockerignore keeps tests, caches and virtualenvs out).
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="flexnpu" \
      org.opencontainers.image.description="Share Huawei Ascend 910B NPUs between Kubernetes pods" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin flexnpu
# The node DaemonSet's init container runs this to copy the in-pod runtime onto the host.
COPY deploy/image/install_runtime.py /opt/flexnpu/install_runtime.py
# Non-root by default; the node DaemonSet runs its containers as root (device nodes, kubelet sockets).
USER 10001:10001
ENTRYPOINT ["flexnpu"]
CMD ["--help"]
