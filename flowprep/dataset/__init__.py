"""Dataset layer: manifests (rows, official annotation files), sources (local files, packaged
samples, generated clips, yt-dlp downloads), folders of videos as manifests and decoding
(ffmpeg to RGB blocks).

May touch manifest files, the manifests folder (``manifests.DATA_MANIFESTS``), the download cache and one ffmpeg process per video.
"""
