"""Which changes are events and where they go: the router (rows -> subject, headers,
data, id), logical-message envelopes, change events, dead letters, the preview of
`routes test`. Pure."""
