"""Location proposals (seed 001): where could an object of this class go in this background?

- tokens.py: boxes as coordinate tokens;
- model.py: the autoregressive box model, its encoders and its files;
- sample.py: constrained, KV-cached sampling with NMS and likelihood scores;
- data.py: OPA-layout and PIPE-style data;
- evaluate.py: the seed's TPR-FPR protocol.
"""
