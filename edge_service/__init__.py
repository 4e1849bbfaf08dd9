"""The edge service: registers devices, serves their batches, aggregates and evaluates."""

from edge_service.report import RunReport
from edge_service.service import EdgeService
from edge_service.settings import EdgeSettings

__all__ = ["EdgeService", "EdgeSettings", "RunReport"]
