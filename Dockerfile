FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY carewatch ./carewatch
COPY gateway ./gateway
COPY ingest ./ingest
COPY scoring ./scoring
COPY api ./api
COPY dashboard ./dashboard
COPY firmware_sim ./firmware_sim
RUN pip install --no-cache-dir . && useradd --system --create-home carewatch
USER carewatch
CMD ["carewatch", "--help"]
