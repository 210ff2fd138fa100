# syntax=docker/dockerfile:1
# greenml-operator image: build a wheel, then install it with only its runtime
# dependencies on a slim Python base, as a non-root user. See docs/install.md.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- stage 1: build the wheel (build tools live only here)
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
RUN pip install --no-cache-dir --upgrade pip build
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m build --wheel --outdir /dist .

# ---- stage 2: runtime deps + the wheel in a virtualenv
FROM ${PYTHON_IMAGE} AS venv
# EXTRAS=agent: the node agent's image (nvidia-ml-py, grpcio); the operator's stays lean
ARG EXTRAS=""
RUN python -m venv /opt/greenml
COPY --from=build /dist/*.whl /tmp/
RUN whl=$(ls /tmp/*.whl) && /opt/greenml/bin/pip install --no-cache-dir "${whl}${EXTRAS:+[$EXTRAS]}" \
 && cd /tmp && /opt/greenml/bin/greenml simulate --output-dir /tmp/smoke >/dev/null && rm -rf /tmp/smoke \
 && /opt/greenml/bin/pip uninstall -y pip setuptools wheel \
 && find /opt/greenml -name '__pycache__' -prune -exec rm -rf {} +

# ---- final: no compilers, no pip, no source tree
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="greenml-operator" \
      org.opencontainers.image.description="Kubernetes operator that keeps ML workloads inside carbon and energy budgets" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/greenml/greenml-operator"
RUN pip uninstall -y pip setuptools wheel 2>/dev/null; \
    groupadd --gid 65532 greenml && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin greenml
COPY --from=venv /opt/greenml /opt/greenml
ENV PATH=/opt/greenml/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["greenml"]
CMD ["run"]
