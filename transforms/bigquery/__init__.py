"""BigQuery as an input (a table or a query, read in typed batches) and as an output (a table
sink: a staging table, one copy job at finalize); names and types in `tables`."""
from transforms.bigquery.sink import TableSink, output_sink
from transforms.bigquery.source import BigQuerySource, bigquery_input

__all__ = ["BigQuerySource", "bigquery_input", "TableSink", "output_sink"]
