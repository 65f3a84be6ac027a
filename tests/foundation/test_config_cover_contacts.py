"""[cover], [[contacts]], contacts_file, documents.header and smtp.bare_lf through the real loader: each problem named by its key."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from support.foundation import base_config, merge
from gatewayd.config import ConfigError, Contact, load_config_data
from gatewayd.email_to_fax.policy import contact_problems


def problems(data: dict) -> list[str]:
    """What the loader refuses, then (for a file it accepts) what the number
    policy refuses of the contacts, as check-config reports them."""
    try:
        config = load_config_data(data, env={})
    except ConfigError as exc:
        return exc.problems
    found = contact_problems(config)
    assert found, "nothing refused"
    return found


def test_defaults(tmp_path: Path) -> None:
    c = load_config_data(base_config(tmp_path), env={})
    assert c.smtp.bare_lf == "reject" and c.documents.header == "" and c.contacts == () and c.contacts_file == ""
    assert (c.cover.organisation, c.cover.phone, c.cover.notice, c.cover.logo) == ("", "", "", "")


def test_cover_section_and_logo(tmp_path: Path) -> None:
    logo = tmp_path / "logo.png"
    Image.new("RGB", (40, 20), "black").save(logo)
    c = load_config_data(merge(base_config(tmp_path), {"cover": {"organisation": " Smith LLP ", "phone": "+1 555 0100",
                                                                  "notice": "Confidential.\nSecond line.", "logo": str(logo)}}), env={})
    assert (c.cover.organisation, c.cover.notice, c.cover.logo) == ("Smith LLP", "Confidential.\nSecond line.", str(logo))
    jpeg = tmp_path / "logo.jpg"
    Image.new("RGB", (40, 20), "black").save(jpeg, "JPEG")
    broken = tmp_path / "broken.png"
    broken.write_bytes(logo.read_bytes()[:40])
    assert problems(merge(base_config(tmp_path), {"cover": {"logo": str(jpeg)}})) == [f"cover.logo: {jpeg} is not a PNG file"]
    assert problems(merge(base_config(tmp_path), {"cover": {"logo": str(broken)}}))[0].startswith(f"cover.logo: {broken} is not a readable PNG")
    assert problems(merge(base_config(tmp_path), {"cover": {"logo": str(tmp_path / "none.png")}}))[0].startswith("cover.logo:")
    assert problems(merge(base_config(tmp_path), {"cover": {"organisation": "a\nb", "colour": "red"}})) == [
        "cover.organisation: control characters are not allowed", "cover.colour: unknown key"]


@pytest.mark.parametrize(("header", "why"), [
    ("{organisation} {bogus}", "unknown placeholder {bogus}"),
    ("{to.__class__}", "unknown placeholder {to.__class__}"),
    ("{page:>5}", "format specs and conversions are not allowed"),
    ("{page!r}", "format specs and conversions are not allowed"),
    ("page {", "not a valid format"),
])
def test_header_format_is_checked(tmp_path: Path, header: str, why: str) -> None:
    (problem,) = problems(merge(base_config(tmp_path), {"documents": {"header": header}}))
    assert problem.startswith("documents.header: ") and why in problem, problem


def test_header_with_every_placeholder(tmp_path: Path) -> None:
    fmt = "{{TSI}} {organisation} {phone} {date} {to} {page}/{pages}"
    assert load_config_data(merge(base_config(tmp_path), {"documents": {"header": fmt}}), env={}).documents.header == fmt


def test_bare_lf_choice(tmp_path: Path) -> None:
    assert load_config_data(merge(base_config(tmp_path), {"smtp": {"bare_lf": "normalize"}}), env={}).smtp.bare_lf == "normalize"
    assert problems(merge(base_config(tmp_path), {"smtp": {"bare_lf": "accept"}})) == [
        'smtp.bare_lf: expected one of "reject", "normalize", got "accept"']


def test_contacts_inline_and_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "contacts.csv").write_text("alias,name,number\nfront-desk,Front desk,1234\n\nacme.sales,\"Acme, Sales\",8 (495) 123-45-67\n", encoding="utf-8")
    data = merge(base_config(tmp_path), {"contacts": [{"alias": "Lab", "name": "City Lab", "number": "+7 812 309-00-01"}]})
    data["contacts_file"] = str(tmp_path / "contacts.csv")
    c = load_config_data(data, env={})
    assert c.contacts == (Contact("lab", "City Lab", "+7 812 309-00-01"), Contact("front-desk", "Front desk", "1234"),
                          Contact("acme.sales", "Acme, Sales", "8 (495) 123-45-67"))
    assert c.contact("LAB") == c.contacts[0] and c.contact("nobody") is None


def test_contacts_file_relative_to_the_configuration(tmp_path: Path) -> None:
    from gatewayd.config import load_config
    from support.foundation import to_toml

    (tmp_path / "contacts.csv").write_text("alias,name,number\nlab,City Lab,+78123090001\n", encoding="utf-8")
    path = tmp_path / "config.toml"
    path.write_text('contacts_file = "contacts.csv"\n' + to_toml(base_config(tmp_path / "state")), encoding="utf-8")
    assert load_config(path, env={}).contacts == (Contact("lab", "City Lab", "+78123090001"),)


def test_contact_problems_are_named(tmp_path: Path) -> None:
    """The loader names what is wrong with a contact as written."""
    (tmp_path / "contacts.csv").write_text(
        "alias,name,number\nlab,Dup,+78123090002\nbad alias,X,+78123090003\nok,Name,+78123090004,extra\n", encoding="utf-8")
    data = merge(base_config(tmp_path), {
        "contacts": [
            {"alias": "lab", "name": "City Lab", "number": "+78123090001"},
            {"alias": "12345", "name": "Digits", "number": "+78123090005"},
            {"alias": "x", "name": "", "number": "+78123090006"},
            {"alias": "z", "name": "Z", "number": "+78123090007", "fax": 1},
        ],
    })
    data["contacts_file"] = str(tmp_path / "contacts.csv")
    found = problems(data)
    assert found == [
        'contacts[1].alias: expected letters, digits, ".", "-" or "_" with at least one letter (the local part of <alias>@<fax domain>), got "12345"',
        'contacts[2].name: expected a name of one line (at most 200 characters), got ""',
        "contacts[3].fax: unknown key",
        'contacts_file[line 3].alias: expected letters, digits, ".", "-" or "_" with at least one letter (the local part of <alias>@<fax domain>), got "bad alias"',
        "contacts_file[line 4]: expected 3 columns (alias,name,number), got 4",
        'contacts_file[line 2].alias: duplicate alias "lab" (also contacts[0])',
    ], found


def test_contact_numbers_the_policy_refuses_are_named(tmp_path: Path) -> None:
    """Each contact's number goes through the number policy (check-config, start, reload): named where it was written."""
    (tmp_path / "contacts.csv").write_text("alias,name,number\nfile-lab,Dup,+78123090002\nok,Fine,+74951234567\n", encoding="utf-8")
    data = merge(base_config(tmp_path), {
        "contacts": [
            {"alias": "lab", "name": "City Lab", "number": "+78123090001"},
            {"alias": "y", "name": "Y", "number": "not a number"},
            {"alias": "police", "name": "Police", "number": "112"},
        ],
        "numbers": {"deny": ["+781230900"]},
    })
    data["contacts_file"] = str(tmp_path / "contacts.csv")
    found = problems(data)
    assert found[:2] == [
        "contacts[0].number: +78123090001: destination not allowed",
        "contacts[1].number: <not a number>: not a fax number",
    ], found
    assert found[2].startswith("contacts[2].number: 112: ") and "emergency" in found[2], found
    assert found[3:] == ["contacts_file[line 2].number: +78123090002: destination not allowed"], found

def test_duplicate_aliases_in_any_case_and_across_the_file(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("alias,name,number\nLAB,Other lab,+78123090002\n", encoding="utf-8")
    data = merge(base_config(tmp_path), {"contacts": [{"alias": "lab", "name": "City Lab", "number": "+78123090001"}]})
    data["contacts_file"] = str(tmp_path / "c.csv")
    assert problems(data) == ['contacts_file[line 2].alias: duplicate alias "lab" (also contacts[0])']


def test_contacts_file_problems(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("name,alias,number\n", encoding="utf-8")
    data = base_config(tmp_path)
    data["contacts_file"] = str(tmp_path / "c.csv")
    assert problems(data) == [f"contacts_file: {tmp_path / 'c.csv'}: the first line must be the columns alias,name,number, got name,alias,number"]
    data["contacts_file"] = str(tmp_path / "missing.csv")
    assert problems(data)[0].startswith("contacts_file:")
    data["contacts_file"] = 3
    assert problems(data) == ["contacts_file: expected a file name, got 3"]
