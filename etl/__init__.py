"""Korean Wikipedia + Namuwiki dumps -> OpenSearch neural sparse knowledge-distillation data.

Stages are DuckDB SQL models in ``etl/sql/`` plus Python stages (ingest, embedding UDFs, usearch
mining, k-means, export); see README.md. Entry point: ``python -m etl run``.
"""

__version__ = "0.1.0"
