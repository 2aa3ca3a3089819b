"""The appliance: the `aoi` CLI, configuration, the line runner, records, service and GUI."""
