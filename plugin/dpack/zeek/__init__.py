"""The link to Zeek: the event contract, its WebSocket JSON and Broker forms, the transports."""
