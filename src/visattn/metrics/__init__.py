"""Metrics: caption n-grams (captions.py), caption content (caption_content.py), attention correctness,
localisation and detection. The caption content metric is re-exported here."""

from visattn.metrics.caption_content import CaptionContent, Mention, caption_content, content_scores, parse_caption

__all__ = ["CaptionContent", "Mention", "caption_content", "content_scores", "parse_caption"]
