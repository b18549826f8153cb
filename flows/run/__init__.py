"""One run's life, from the first refusal to the settlement: the job and its admissions
(``job``), spawn, watch and settle (``lifecycle``), the run's Prefect states (``states``), cancel
(``cancellation``), settlement (``settlement``) and the reaper of runs whose flow died
(``reaper``). The run row and the budget settlement are written from here."""
