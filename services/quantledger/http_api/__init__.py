"""The HTTP/JSON API: routes from the protos' google.api.http annotations over the gRPC servicers."""
