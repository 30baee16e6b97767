"""The bundled demo: data written for fastmarco and the embedded default jobs."""
