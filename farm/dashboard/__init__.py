"""`farmctl dashboard`: a web page over the farm (queues, workers, failed jobs, schedule) and
`/metrics`, served by the standard library's ThreadingHTTPServer from a cached snapshot."""
