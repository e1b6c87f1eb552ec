"""Ten lines: register an object from one example, segment a new image. Usage:
python samples/quickstart.py BUNDLE EXAMPLE.jpg EXAMPLE_MASK.png QUERY.jpg OUT.png"""
import sys

import cv2

from sccan.sdk import Segmenter

bundle, example, mask, query, out = sys.argv[1:6]
seg = Segmenter(bundle)                                        # TensorRT engines if usable, else ONNX Runtime
seg.add_class("object", [cv2.imread(example)], [cv2.imread(mask, cv2.IMREAD_GRAYSCALE)])
frame = cv2.imread(query)                                      # BGR, as OpenCV reads it
result = seg.segment(frame)
cv2.imwrite(out, result.overlay(frame))
print(f"object covers {result.masks['object'].mean():.1%} of the image; {result.timings['total'] * 1000:.0f} ms")
