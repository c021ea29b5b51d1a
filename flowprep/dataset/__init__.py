"""Dataset layer: manifests (rows, official annotation files), sources (local files, packaged
samples, generated clips, yt-dlp downloads) and decoding (ffmpeg to RGB blocks).

May touch manifest files, ``data_manifests/``, the download cache and one ffmpeg process per video.
"""
