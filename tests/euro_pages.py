"""euro-millions.com result pages in each markup the site has used (see shared/data/euromillions-markup.md)."""

from __future__ import annotations


def _items(numbers: list[int], stars: list[int], ball: str, star: str, pad: bool = False) -> str:
    fmt = "{:02d}" if pad else "{}"
    main = "".join(f'\n   <li class="{ball}">{fmt.format(n)}</li>' for n in numbers)
    lucky = "".join(f'\n   <li class="{star}">{fmt.format(s)}</li>' for s in stars)
    return main + lucky


def current_page(heading: str, numbers: list[int], stars: list[int], drawn: tuple[list[int], list[int]] | None = None,
                 canonical: str | None = None) -> bytes:
    """The per-date page of 2024-2026: ul#ballsAscending with li.resultBall.ball / li.resultBall.lucky-star."""
    drawn_block = ""
    if drawn is not None:
        drawn_block = ('<div class="box half"><div class="h4">Drawn order</div><ul id="ballsDrawn">'
                       + _items(*drawn, "resultBall ball", "resultBall lucky-star") + "</ul></div>")
    link = f'<link rel="canonical" href="{canonical}">' if canonical else ""
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{link}
<title>EuroMillions Results</title>
<meta name="description" content="EuroMillions results: {' '.join(map(str, numbers))}"></head>
<body><div id="content">
 <div class="prev-left"><a href="/results/01-01-2004">Previous draw: Friday 1st January 2004</a></div>
 <div class="fx btwn wrapSM">
  <div class="box half fx col jcen"><div>
   <div class="h3">{heading}</div>
   <ul id="ballsAscending">{_items(numbers, stars, "resultBall ball", "resultBall lucky-star")}
   </ul>
  </div></div>
  {drawn_block}
 </div>
</div></body></html>""".encode()


def balls_drawn_2020(numbers: list[int], stars: list[int], drawn: tuple[list[int], list[int]]) -> bytes:
    """Aug 2020 - 2021: div#ballsAscending and div#ballsDrawn holding ul > li.new.ball."""
    return f"""<html><body><div class="topBox">
<div id="ballsAscending"><ul>{_items(numbers, stars, "new ball", "new lucky-star")}</ul></div>
<div id="ballsDrawn"><ul>{_items(*drawn, "new ball", "new lucky-star")}</ul></div>
</div></body></html>""".encode()


def order_cell_2018(numbers: list[int], stars: list[int], inline_script: bool = False) -> bytes:
    """2018 - 2020: div#jsBallOrderCell with li.new.ball, sometimes filled by an inline script."""
    items = "<ul>" + _items(numbers, stars, "new ball", "new lucky-star").replace("\n", "") + "</ul>"
    if inline_script:
        escaped = items.replace('"', '\\"')
        return f"""<html><body><div class="topBox"><div id="jsBallOrderCell"></div>
<script>document.getElementById("jsBallOrderCell").innerHTML = "{escaped}";</script></div></body></html>""".encode()
    return f'<html><body><div class="topBox"><div id="jsBallOrderCell">{items}</div></div></body></html>'.encode()


def tables_2013(draws: list[tuple[str, str, list[int], list[int]]]) -> bytes:
    """The 2013 pages: table.tableR with a heading row, then td.euro-ball / td.euro-lucky-star cells.

    Each draw is (heading, DD-MM-YYYY, numbers, stars); /results.asp listed ten of them."""
    blocks = []
    for heading, dashed, numbers, stars in draws:
        cells = "".join(f'<td class="euro-ball">{n}</td>\r\n' for n in numbers)
        cells += "".join(f'<td class="euro-lucky-star">{s}</td>\r\n' for s in stars)
        blocks.append(f"""<table width="94%" align="center" cellpadding="4" cellspacing="0" class="tableR">\r
<tr>\r
<th align="left" nowrap="nowrap">{heading}</th>\r
<td align="right" nowrap="nowrap">\r
<a href="/results/{dashed}.asp" class="breakdown-link">Euromillions Results for {dashed} draw</a></td></tr>\r
<tr><td colspan="2"><table width="410"><tr>\r
{cells}</tr></table></td></tr>\r
</table>""")
    return ("<html><head><meta charset='iso-8859-1'></head><body>" + "\r\n".join(blocks) + "</body></html>").encode(
        "iso-8859-1")


def history_rows_2023(draws: list[tuple[str, list[int], list[int]]]) -> bytes:
    """/results-history-YYYY since 2023: tr.resultRow, td.date a[href=/results/DD-MM-YYYY], ul.balls li."""
    rows = []
    for dashed, numbers, stars in draws:
        rows.append(f"""<tr class="resultRow"><td class="date"><a href="/results/{dashed}">A draw</a></td>
<td><ul class="balls">{_items(numbers, stars, "resultBall ball", "resultBall lucky-star")}</ul></td></tr>""")
    return f'<html><body><div id="content"><table id="resultsTable"><tbody>{"".join(rows)}</tbody></table></div>' \
           f"</body></html>".encode()
