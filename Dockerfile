# faqbot — CPU image. Build: docker build -t faqbot .   Run: docker run -p 8000:8000 -v faqbot-data:/data faqbot
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    FAQBOT_DATA_DIR=/data \
    FAQBOT_HOST=0.0.0.0 \
    FAQBOT_PORT=8000 \
    OMP_WAIT_POLICY=PASSIVE \
    HF_HUB_OFFLINE=1

WORKDIR /app
COPY constraints.txt pyproject.toml README.md ./
COPY faq ./faq
COPY index ./index
COPY bot ./bot
COPY admin ./admin
# CPU-only torch, exactly the pinned version (the default index would pull a multi-GB CUDA build).
RUN pip install --constraint constraints.txt --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install --constraint constraints.txt . \
 && useradd --create-home --uid 10001 faqbot \
 && mkdir -p /data && chown faqbot:faqbot /data
# The default `auto` encoder's one-time export (bundled weights -> ONNX int8, under a minute, 3 GB of RAM) runs at build
# time, not on a container's first start under its memory limit. It lands in /data/models: Docker copies it into
# a new named volume on first use (an empty bind mount exports once on first start instead). The build fails
# unless the export is the verified one (a calibration ships for exactly these bytes).
RUN python -c "from index.encoders import EncoderSpec, load_encoder; \
e = load_encoder(EncoderSpec('auto', models_dir='/data/models')); \
assert e.name.startswith('onnx:'), 'the ONNX int8 export is not the verified one'" \
 && chown -R faqbot:faqbot /data

USER faqbot
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"
CMD ["faqbot", "serve"]
