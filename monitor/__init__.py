"""Running a site around the camera runtime: Prometheus metrics, health, events (MQTT, JSONL), clips and a live view,
served beside `Pipeline.stream_many` by one small HTTP server. Needs `pip install 'fusionrt[site]'`."""

from fusionrt.monitor.site import Site, SiteOptions

__all__ = ["Site", "SiteOptions"]
