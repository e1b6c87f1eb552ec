"""The quickstart against a Triton server: the same calls, one line different. Usage:
    sccan triton BUNDLE -o repo && sccan serve repo --python .venv-serve/bin/python &
    python samples/triton_client.py localhost:8000 EXAMPLE.jpg EXAMPLE_MASK.png QUERY.jpg OUT.png
Any number of such clients (robots, cameras) share the server's classes: a class registered by one
is segmented by all, and stays registered across server restarts."""
import sys

import cv2

from sccan.serve import RemoteSegmenter

url, example, mask, query, out = sys.argv[1:6]
seg = RemoteSegmenter(url)                                     # was: Segmenter(bundle); "host:8001", "grpc" for gRPC
seg.add_class("object", [cv2.imread(example)], [cv2.imread(mask, cv2.IMREAD_GRAYSCALE)])
frame = cv2.imread(query)                                      # BGR, as OpenCV reads it
result = seg.segment(frame)
cv2.imwrite(out, result.overlay(frame))
print(f"object covers {result.masks['object'].mean():.1%} of the image; server time "
      f"{result.timings['total'] * 1000:.0f} ms; classes on the server: {seg.classes}")
