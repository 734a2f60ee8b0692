"""``sandbox doctor``: short, real experiments on your image that find what loses requests in rollouts.

``measure`` holds what the experiments measured (plain numbers), ``findings`` judges them (pure:
one :class:`~sandbox.doctor.findings.Finding` per experiment), ``snippets`` turns them into settings
for Kubernetes, Compose/Swarm, Nomad and Kamal, ``lab`` runs the experiments, ``run`` gives them a
fleet of doctor's own and removes it, and ``output`` renders the findings as text, JSON, Markdown and JUnit.
"""
