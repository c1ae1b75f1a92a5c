"""Reference figures the synthetic census draws from: shares, rates and name lists.

Shares are rough national proportions for England around 2017, enough for realistic
tables; they are not official statistics.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

from safestats.resources import CODELISTS

TERMS = ("2016-autumn", "2017-spring", "2017-summer")
CENSUS_DAYS = ("2016-10-06", "2017-01-19", "2017-05-18")
YEAR_START = "2016-09-01"
SESSIONS_IN_TERM = (140, 118, 112)

NC_YEARS = ("R", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13")
NC_YEAR_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.98, 0.95, 0.95, 0.93, 0.92, 0.9, 0.35, 0.3)

ETHNICITY = (
    "WBRI",
    "WIRI",
    "WIRT",
    "WOTH",
    "WROM",
    "MWBC",
    "MWBA",
    "MWAS",
    "MOTH",
    "AIND",
    "APKN",
    "ABAN",
    "AOTH",
    "BCRB",
    "BAFR",
    "BOTH",
    "CHNE",
    "OOTH",
    "REFU",
    "NOBT",
)
# Shares of the non-White-British, non-refused population.
ETHNICITY_OTHER_SHARES = (
    0,
    0.02,
    0.003,
    0.2,
    0.01,
    0.05,
    0.025,
    0.05,
    0.06,
    0.09,
    0.14,
    0.06,
    0.06,
    0.04,
    0.13,
    0.02,
    0.015,
    0.05,
    0,
    0,
)
# Probability that the first language is not English, per ethnicity code.
OTHER_LANGUAGE_BY_ETHNICITY = (
    0.005,
    0.05,
    0.05,
    0.7,
    0.6,
    0.03,
    0.3,
    0.2,
    0.3,
    0.6,
    0.75,
    0.85,
    0.7,
    0.02,
    0.5,
    0.2,
    0.6,
    0.6,
    0.3,
    0.3,
)

# Nationalities of pupils whose first language is not English, with weights.
OTHER_NATIONALITIES = {
    "POL": 12,
    "ROU": 8,
    "PAK": 7,
    "IND": 6,
    "LTU": 4,
    "BGD": 4,
    "NGA": 4,
    "SOM": 3,
    "PRT": 3,
    "ITA": 3,
    "ESP": 2,
    "LVA": 2,
    "BGR": 3,
    "HUN": 2,
    "AFG": 2,
    "IRQ": 2,
    "CHN": 2,
    "TUR": 2,
    "SVK": 2,
    "CZE": 1,
    "ERI": 1,
    "SYR": 1,
    "FRA": 1,
    "DEU": 1,
    "BRA": 1,
    "GHA": 1,
    "ZWE": 1,
    "LKA": 1,
    "PHL": 1,
    "IRN": 1,
}
PROFICIENCY = ("A", "B", "C", "D", "E", "N")
PROFICIENCY_WEIGHTS = (0.07, 0.11, 0.17, 0.17, 0.33, 0.15)
LEAVING_REASONS = ("MOV", "EMI", "EHE", "PEX", "OTH")
LEAVING_REASON_WEIGHTS = (0.7, 0.12, 0.06, 0.02, 0.1)

# Codes outside the code lists that schools return by mistake (validity problems).
INVALID_CODES = {
    "nationality": ("UK", "ENG", "XXX"),
    "country_of_birth": ("UK", "XXX"),
    "proficiency_in_english": ("F", "X"),
}

FORENAMES_F = (
    "Olivia",
    "Amelia",
    "Isla",
    "Ava",
    "Emily",
    "Sophia",
    "Grace",
    "Mia",
    "Poppy",
    "Ella",
    "Lily",
    "Evie",
    "Isabella",
    "Sophie",
    "Ivy",
    "Freya",
    "Harper",
    "Willow",
    "Aisha",
    "Zara",
    "Maryam",
    "Fatima",
    "Zuzanna",
    "Maja",
    "Chloe",
    "Ruby",
    "Jessica",
    "Daisy",
    "Amira",
    "Hannah",
)
FORENAMES_M = (
    "Oliver",
    "Harry",
    "George",
    "Noah",
    "Jack",
    "Jacob",
    "Leo",
    "Oscar",
    "Charlie",
    "Muhammad",
    "Alfie",
    "Thomas",
    "Joshua",
    "James",
    "William",
    "Henry",
    "Freddie",
    "Archie",
    "Theo",
    "Isaac",
    "Mohammed",
    "Yusuf",
    "Jakub",
    "Filip",
    "Adam",
    "Ethan",
    "Daniel",
    "Samuel",
    "Ibrahim",
    "Luca",
)
SURNAMES = (
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Brown",
    "Davies",
    "Evans",
    "Wilson",
    "Thomas",
    "Johnson",
    "Roberts",
    "Robinson",
    "Thompson",
    "Wright",
    "Walker",
    "White",
    "Edwards",
    "Hughes",
    "Green",
    "Hall",
    "Lewis",
    "Harris",
    "Clarke",
    "Patel",
    "Jackson",
    "Wood",
    "Turner",
    "Martin",
    "Cooper",
    "Hill",
    "Ward",
    "Morris",
    "Moore",
    "Clark",
    "Lee",
    "King",
    "Baker",
    "Harrison",
    "Morgan",
    "Allen",
    "Khan",
    "Ahmed",
    "Ali",
    "Hussain",
    "Begum",
    "Nowak",
    "Kowalski",
    "Popescu",
    "Okafor",
    "Mohamed",
    "Singh",
    "Kaur",
    "Chen",
    "Wang",
)
POSTCODE_AREAS = (
    "B",
    "BS",
    "CV",
    "DE",
    "E",
    "EC",
    "L",
    "LE",
    "LS",
    "M",
    "ME",
    "N",
    "NE",
    "NG",
    "NW",
    "OX",
    "PL",
    "S",
    "SE",
    "SO",
    "SW",
    "TN",
    "W",
    "WC",
    "YO",
    "CM",
    "CT",
    "GU",
    "RG",
    "HP",
)
UPN_CHECK_LETTERS = "ABCDEFGHJKLMNPQRTUVWXYZ"


@dataclass(frozen=True)
class LocalAuthority:
    code: str
    name: str
    region: str
    pupils: int


def local_authorities() -> tuple[LocalAuthority, ...]:
    """The 152 English local authorities of 2017, with rough pupil numbers (the size skew)."""
    with (CODELISTS / "la.csv").open(newline="") as f:
        return tuple(LocalAuthority(r["code"], r["label"], r["region"], int(r["pupils"])) for r in csv.DictReader(f))
