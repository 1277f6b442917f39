"""The site's web board: pages over the same service, port and tokens as the client API.

A person logs in with a site token; the board keeps only a signed session value in an
HTTP-only cookie (the token's id, never the token). Pages are server-rendered Jinja2
templates; the static assets (CSS, a small script, an SVG line chart) are files of this
package, so the board needs no internet. See docs/sites.md, "Board".
"""
