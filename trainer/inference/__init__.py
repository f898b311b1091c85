"""One base, many adapters: batched and streamed generation for the app, the eval and the local generator (`model`),
with compiled decoding and a turn cache (`decode`)."""
