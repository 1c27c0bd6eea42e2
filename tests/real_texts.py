"""Five BBC-like texts and five few-shot examples for the tests that run real models (local or served)."""

from tailorkd.recipe import TaskConfig

TASK = TaskConfig(name="topic", description="News topic", labels=[{"name": n} for n in
                  ("business", "entertainment", "politics", "sport", "tech")])
SHOTS = [
    {"id": "s1", "label": "sport", "text": "The striker scored twice as Chelsea beat Arsenal 2-0 in the league."},
    {"id": "s2", "label": "business", "text": "Shares in the bank fell 5% after it reported lower quarterly profits."},
    {"id": "s3", "label": "tech", "text": "The new smartphone has a faster chip and a better camera for users."},
    {"id": "s4", "label": "politics",
     "text": "MPs voted on the new immigration bill after a long debate in parliament."},
    {"id": "s5", "label": "entertainment",
     "text": "The band's new album went straight to number one in the music charts."},
]
TEXTS = [
    ("The tennis champion won the final in straight sets at Wimbledon.", "sport"),
    ("The central bank raised interest rates as inflation hit the economy and markets fell.", "business"),
    ("The prime minister called an election after parliament rejected the government's budget.", "politics"),
    ("The film star won an Oscar for her role in the new Hollywood movie.", "entertainment"),
    ("Software developers released a new version of the web browser with better security.", "tech"),
]
